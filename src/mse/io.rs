//! Drives the pure handshake over a byte stream, under one deadline for the
//! whole exchange (a peer dribbling a byte at a time cannot hold us longer).

use super::handshake::{Established, Initiator, Progress, Responder};
use super::{Methods, MseError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read per step; the machines bound what they keep.
const CHUNK: usize = 4096;

/// Maps HASH('req2', SKEY) to an info hash we serve.
pub type Lookup<'a> = &'a (dyn Fn(&[u8; 20]) -> Option<[u8; 20]> + Sync);

/// Runs the initiator's side; `ia` is our BitTorrent handshake.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    skey: [u8; 20],
    offer: Methods,
    ia: Vec<u8>,
    timeout: Duration,
) -> Result<Established, MseError> {
    let (mut machine, first) = Initiator::new(skey, offer, ia, &mut rand::thread_rng());
    deadline(timeout, async {
        send(stream, &first).await?;
        run(stream, |bytes| machine.feed(bytes)).await
    })
    .await
}

/// Runs the responder's side; `first` are bytes the listener read already.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    first: &[u8],
    accept: Methods,
    lookup: Lookup<'_>,
    timeout: Duration,
) -> Result<Established, MseError> {
    let mut machine = Responder::new(accept, &mut rand::thread_rng());
    deadline(timeout, async {
        let progress = machine.feed(first, lookup)?;
        if let Some(done) = progress.done {
            return Ok(done);
        }
        send(stream, &progress.send).await?;
        run(stream, |bytes| machine.feed(bytes, lookup)).await
    })
    .await
}

async fn deadline<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, MseError>>,
) -> Result<T, MseError> {
    tokio::time::timeout(timeout, work).await.map_err(|_| MseError::Timeout)?
}

/// Reads and feeds until the machine is through, sending what it says.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut feed: impl FnMut(&[u8]) -> Result<Progress, MseError>,
) -> Result<Established, MseError> {
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io_err)?;
        if n == 0 {
            return Err(MseError::Closed);
        }
        let progress = feed(&chunk[..n])?;
        send(stream, &progress.send).await?;
        if let Some(done) = progress.done {
            return Ok(done);
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), MseError> {
    if !bytes.is_empty() {
        stream.write_all(bytes).await.map_err(io_err)?;
    }
    Ok(())
}

fn io_err(e: std::io::Error) -> MseError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => MseError::Closed,
        _ => MseError::Io(e.to_string()),
    }
}
