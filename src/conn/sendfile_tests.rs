//! The writer's file ranges over a real loopback socket: partial sends
//! under a small send buffer, and a file cut short under a send.

use super::outqueue::FileRange;
use super::{write_out, OutQueue, Stream, Transport};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A connected pair: our plain TCP write half with a small send buffer,
/// and the peer's socket.
async fn pair() -> (super::WriteHalf, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    socket2::SockRef::from(&ours).set_send_buffer_size(4096).unwrap();
    let (theirs, _) = listener.accept().await.unwrap();
    let (_rd, wr) = Transport::plain(Stream::Tcp(ours)).into_split();
    assert!(wr.takes_files());
    (wr, theirs)
}

fn file_of(bytes: &[u8]) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

/// Writes the queue out until it is empty or a write fails; returns the
/// writes that took part of a file range only, or the error.
async fn drain(wr: &mut super::WriteHalf, out: &mut OutQueue) -> std::io::Result<usize> {
    let mut partial = 0;
    while let Some(next) = out.next() {
        let asked = match &next {
            super::Next::File { len, .. } => Some(*len),
            _ => None,
        };
        let n = write_out(wr, Some(next)).await?.unwrap();
        partial += usize::from(asked.is_some_and(|len| n < len));
        out.advance(n);
    }
    Ok(partial)
}

#[tokio::test]
async fn a_file_range_goes_whole_and_in_order_through_partial_sends() {
    let (mut wr, mut theirs) = pair().await;
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i * 7 + i / 4099) as u8).collect();
    let file = Arc::new(file_of(&data));
    let mut out = OutQueue::new(true);
    out.push_bytes(b"head");
    let on_short = Arc::new(|why: String| panic!("not short: {why}"));
    out.push_file(FileRange { file: file.clone(), offset: 1000, len: 3 << 20, on_short: on_short.clone() });
    out.push_owned(b"middle".to_vec());
    out.push_file(FileRange { file, offset: 0, len: 999, on_short });
    out.push_bytes(b"tail");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        got
    });
    let partial = drain(&mut wr, &mut out).await.unwrap();
    drop(wr);
    let got = reader.await.unwrap();
    let mut expect = b"head".to_vec();
    expect.extend_from_slice(&data[1000..1000 + (3 << 20)]);
    expect.extend_from_slice(b"middle");
    expect.extend_from_slice(&data[..999]);
    expect.extend_from_slice(b"tail");
    assert!(got == expect, "{} bytes received, {} expected", got.len(), expect.len());
    assert!(partial > 0, "a 4 KiB send buffer takes 3 MiB in parts");
}

#[tokio::test]
async fn a_file_cut_short_under_a_send_is_a_disk_error_not_a_hang() {
    let (mut wr, mut theirs) = pair().await;
    let file = Arc::new(file_of(&[5u8; 1 << 20]));
    let told = Arc::new(Mutex::new(Vec::new()));
    let t = told.clone();
    let on_short = Arc::new(move |why: String| t.lock().unwrap().push(why));
    let mut out = OutQueue::new(true);
    out.push_file(FileRange { file: file.clone(), offset: 0, len: 1 << 20, on_short });
    let read = Arc::new(AtomicUsize::new(0));
    let r = read.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = theirs.read(&mut buf).await {
            if n == 0 {
                break;
            }
            r.fetch_add(n, Ordering::Relaxed);
        }
    });
    // The first part goes, then the file is cut short.
    let n = write_out(&mut wr, out.next()).await.unwrap().unwrap();
    assert!(n < 1 << 20, "the small send buffer took {n} bytes at once");
    out.advance(n);
    std::fs::File::set_len(&file, n as u64).unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), drain(&mut wr, &mut out))
        .await
        .expect("the send hung on a short file")
        .unwrap_err();
    assert_ne!(e.kind(), std::io::ErrorKind::UnexpectedEof, "would read as the peer closing: {e}");
    assert!(e.to_string().contains("cut short"), "{e}");
    assert_eq!(told.lock().unwrap().len(), 1, "the owner was told once");
    drop(wr);
    reader.await.unwrap();
    assert_eq!(read.load(Ordering::Relaxed), n, "nothing past the end was sent");
}
