//! The 768-bit Diffie-Hellman exchange of MSE (the spec's prime, G = 2).

use super::{MseError, KEY_LEN};
use num_bigint::BigUint;
use rand::RngCore;
use std::sync::OnceLock;

const P_HEX: &[u8] = b"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";

fn prime() -> &'static BigUint {
    static P: OnceLock<BigUint> = OnceLock::new();
    P.get_or_init(|| BigUint::parse_bytes(P_HEX, 16).expect("the spec's prime parses"))
}

/// Our secret exponent and the public key made from it.
pub struct KeyPair {
    secret: BigUint,
    pub public: [u8; KEY_LEN],
}

impl KeyPair {
    /// A 160-bit secret, as the spec recommends.
    pub fn generate(rng: &mut impl RngCore) -> KeyPair {
        let mut x = [0u8; 20];
        rng.fill_bytes(&mut x);
        let secret = BigUint::from_bytes_be(&x);
        let public = to_wire(&BigUint::from(2u32).modpow(&secret, prime()));
        KeyPair { secret, public }
    }

    /// The shared secret S from the peer's public key. Keys of 0, 1, P-1 or
    /// more would give a secret an eavesdropper can guess: refused.
    pub fn shared(&self, theirs: &[u8]) -> Result<[u8; KEY_LEN], MseError> {
        let y = BigUint::from_bytes_be(theirs);
        let p = prime();
        if y <= BigUint::from(1u32) || y >= p - 1u32 {
            return Err(MseError::BadKey);
        }
        Ok(to_wire(&y.modpow(&self.secret, p)))
    }
}

/// Big-endian, left-padded with zeros to 96 bytes.
fn to_wire(n: &BigUint) -> [u8; KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    out[KEY_LEN - bytes.len()..].copy_from_slice(&bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_reach_the_same_secret() {
        let mut rng = rand::thread_rng();
        let (a, b) = (KeyPair::generate(&mut rng), KeyPair::generate(&mut rng));
        assert_eq!(a.shared(&b.public).unwrap(), b.shared(&a.public).unwrap());
    }

    #[test]
    fn trivial_keys_are_refused() {
        let a = KeyPair::generate(&mut rand::thread_rng());
        let p_minus_1 = to_wire(&(prime() - 1u32));
        for bad in [[0u8; KEY_LEN], to_wire(&BigUint::from(1u32)), p_minus_1, [0xff; KEY_LEN]] {
            assert_eq!(a.shared(&bad), Err(MseError::BadKey));
        }
    }
}
