//! RC4 as MSE uses it: keyed with a 20-byte SHA-1, its first 1024 bytes of
//! keystream thrown away (the weak start of RC4's output).

use rc4::consts::U20;
use rc4::{KeyInit, Rc4, StreamCipher};

pub struct Rc4Stream(Rc4<U20>);

impl Rc4Stream {
    pub fn new(key: &[u8; 20]) -> Rc4Stream {
        let mut rc4 = Rc4::new(key.into());
        rc4.apply_keystream(&mut [0u8; 1024]);
        Rc4Stream(rc4)
    }

    /// Encrypts or decrypts in place (the same operation), advancing the key
    /// stream by `data.len()`.
    pub fn apply(&mut self, data: &mut [u8]) {
        self.0.apply_keystream(data);
    }
}

/// The two directions' keys: A encrypts with keyA, B with keyB.
pub fn keys(s: &[u8], skey: &[u8; 20]) -> ([u8; 20], [u8; 20]) {
    (super::hash(&[b"keyA", s, skey]), super::hash(&[b"keyB", s, skey]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stream_decrypts_what_the_other_encrypts_in_any_chunks() {
        let key = [7u8; 20];
        let (mut enc, mut dec) = (Rc4Stream::new(&key), Rc4Stream::new(&key));
        let plain: Vec<u8> = (0..5000u32).map(|i| (i * 31) as u8).collect();
        let mut data = plain.clone();
        enc.apply(&mut data);
        assert_ne!(data, plain);
        for chunk in data.chunks_mut(333) {
            dec.apply(chunk);
        }
        assert_eq!(data, plain);
    }

    #[test]
    fn the_first_1024_bytes_of_keystream_are_dropped() {
        let key = [1u8; 20];
        let mut raw = Rc4::<U20>::new((&key).into());
        let mut stream = [0u8; 1032];
        raw.apply_keystream(&mut stream);
        let mut ours = [0u8; 8];
        Rc4Stream::new(&key).apply(&mut ours);
        assert_eq!(ours, stream[1024..]);
    }
}
