//! Encryption at rest of media objects (docs/security.md, "Encryption at
//! rest"): with a key ring, an upload is sealed after it was checked and
//! before it reaches the media store, and opened while it streams out.
//!
//! Objects are sealed with the STREAM construction of
//! `tern_backend::seal` in chunks of [`STREAM_CHUNK_BYTES`], bound to their
//! media id, so neither sealing nor opening ever holds more than two chunks
//! in memory, and a truncated, reordered or swapped object fails to open
//! instead of serving wrong bytes. Whether an object is sealed is recorded
//! in its metadata ([`super::Meta::sealed`]): a plaintext object can start
//! with any bytes, so its header cannot tell.
//!
//! The hooks: [`seal_file`] turns the finished temporary upload into a
//! sealed temporary file that the store then places; [`seal_bytes`] seals a
//! variant the server made; [`open_stream`] is the body of a download.

use std::path::Path;

use bytes::Bytes;
use futures_util::stream::Stream;
use tern_backend::seal::{
    KeyRing, STREAM_CHUNK_BYTES, SealError, StreamOpener, TAG_BYTES, stream_header_len,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Seals the file at `src` as the object `id` into a new file at `dst`
/// (fsynced), chunk by chunk.
pub async fn seal_file(ring: &KeyRing, id: &str, src: &Path, dst: &Path) -> std::io::Result<()> {
    let mut input = tokio::fs::File::open(src).await?;
    let mut out = tokio::fs::File::create(dst).await?;
    let (header, mut sealer) = ring.stream_sealer(id);
    out.write_all(&header).await?;
    // One chunk read ahead, to know which one is last. Two chunk buffers,
    // allocated once per upload.
    let mut chunk = Vec::with_capacity(STREAM_CHUNK_BYTES + TAG_BYTES);
    let mut next = Vec::with_capacity(STREAM_CHUNK_BYTES + TAG_BYTES);
    fill(&mut input, &mut chunk, STREAM_CHUNK_BYTES).await?;
    loop {
        if chunk.len() == STREAM_CHUNK_BYTES {
            fill(&mut input, &mut next, STREAM_CHUNK_BYTES).await?;
            if !next.is_empty() {
                sealer.seal_next(&mut chunk);
                out.write_all(&chunk).await?;
                std::mem::swap(&mut chunk, &mut next);
                continue;
            }
        }
        sealer.seal_last(&mut chunk);
        out.write_all(&chunk).await?;
        break;
    }
    out.flush().await?;
    out.sync_all().await
}

/// Seals `bytes` (a variant the server made, held in memory anyway) as the
/// object `id`: the same format [`seal_file`] writes.
pub fn seal_bytes(ring: &KeyRing, id: &str, bytes: &[u8]) -> Vec<u8> {
    let (mut out, mut sealer) = ring.stream_sealer(id);
    out.reserve(bytes.len() + (bytes.len() / STREAM_CHUNK_BYTES + 1) * TAG_BYTES);
    let mut chunks = bytes.chunks(STREAM_CHUNK_BYTES).peekable();
    let mut buf = Vec::with_capacity(STREAM_CHUNK_BYTES + TAG_BYTES);
    if chunks.peek().is_none() {
        sealer.seal_last(&mut buf);
        out.extend_from_slice(&buf);
        return out;
    }
    while let Some(c) = chunks.next() {
        buf.clear();
        buf.extend_from_slice(c);
        if chunks.peek().is_some() {
            sealer.seal_next(&mut buf);
        } else {
            sealer.seal_last(&mut buf);
            out.extend_from_slice(&buf);
            break;
        }
        out.extend_from_slice(&buf);
    }
    out
}

/// The plaintext of the sealed object `id` read from `file`, as a stream of
/// chunks. The header is read and its key found before this returns, so a
/// missing key is an error the caller can answer with; a chunk that fails
/// to open later ends the stream with an error (the client sees a broken
/// download, never wrong bytes).
pub async fn open_stream<R>(
    ring: Option<&KeyRing>,
    id: &str,
    mut file: R,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + use<R>, OpenError>
where
    R: AsyncRead + Unpin + Send,
{
    let mut first = [0u8; 3];
    file.read_exact(&mut first).await?;
    let len = stream_header_len(&first).ok_or(SealError::Malformed("no media header"))?;
    let mut header = first.to_vec();
    header.resize(len, 0);
    file.read_exact(&mut header[3..]).await?;
    let Some(ring) = ring else {
        // Sealed, and no key ring at all: name the key it needs (the header
        // length checked above covers the id).
        let id = String::from_utf8_lossy(&header[3..3 + usize::from(first[2])]).into_owned();
        return Err(OpenError::Sealed(SealError::UnknownKey { id }));
    };
    let opener = ring.stream_opener(id, &header)?;
    let mut chunk = Vec::with_capacity(SEALED_CHUNK_BYTES);
    fill(&mut file, &mut chunk, SEALED_CHUNK_BYTES).await?;
    let state = State {
        file,
        opener: Some(opener),
        chunk,
    };
    Ok(futures_util::stream::try_unfold(state, next_chunk))
}

/// Bytes of one sealed chunk but the last.
const SEALED_CHUNK_BYTES: usize = STREAM_CHUNK_BYTES + TAG_BYTES;

/// Opens the chunk read ahead and reads the next one: the stream's step.
async fn next_chunk<R: AsyncRead + Unpin>(
    mut s: State<R>,
) -> std::io::Result<Option<(Bytes, State<R>)>> {
    let Some(mut opener) = s.opener.take() else {
        return Ok(None);
    };
    // One buffer per chunk: it becomes the `Bytes` handed to hyper.
    let mut next = Vec::with_capacity(SEALED_CHUNK_BYTES);
    if s.chunk.len() == SEALED_CHUNK_BYTES {
        fill(&mut s.file, &mut next, SEALED_CHUNK_BYTES).await?;
    }
    let mut chunk = std::mem::replace(&mut s.chunk, next);
    if s.chunk.is_empty() {
        opener
            .open_last(&mut chunk)
            .map_err(std::io::Error::other)?;
    } else {
        opener
            .open_next(&mut chunk)
            .map_err(std::io::Error::other)?;
        s.opener = Some(opener);
    }
    Ok(Some((Bytes::from(chunk), s)))
}

/// Why a sealed object could not be opened for streaming.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Reading the object failed (or it ends inside its header).
    #[error("media object: {0}")]
    Io(#[from] std::io::Error),
    /// Its key is missing, or its header is malformed.
    #[error("media object: {0}")]
    Sealed(#[from] SealError),
}

struct State<R> {
    file: R,
    /// `None` once the last chunk was opened.
    opener: Option<StreamOpener>,
    /// The next sealed chunk, read ahead; empty at the end of the file.
    chunk: Vec<u8>,
}

/// Reads into `buf` (cleared first) until it holds `n` bytes or the input
/// ends.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    buf.clear();
    buf.resize(n, 0);
    let mut got = 0;
    while got < n {
        let k = r.read(&mut buf[got..]).await?;
        if k == 0 {
            break;
        }
        got += k;
    }
    buf.truncate(got);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    /// Sealing a file and streaming it back gives the same bytes at every
    /// chunk boundary (empty, one byte, exactly one chunk, one more, an
    /// exact multiple); the in-memory sealer writes the same format; a
    /// cut-short object ends the stream with an error.
    #[test]
    fn files_round_trip_at_chunk_boundaries() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ring = KeyRing::new(vec![("k1".into(), [3; 32])], "k1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            for n in [
                0,
                1,
                STREAM_CHUNK_BYTES,
                STREAM_CHUNK_BYTES + 1,
                2 * STREAM_CHUNK_BYTES,
            ] {
                let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
                std::fs::write(&src, &data).unwrap();
                seal_file(&ring, "obj", &src, &dst).await.unwrap();
                let sealed = std::fs::read(&dst).unwrap();
                assert_eq!(read_all(&ring, &sealed).await.unwrap(), data, "{n} bytes");
                let in_memory = seal_bytes(&ring, "obj", &data);
                assert_eq!(
                    read_all(&ring, &in_memory).await.unwrap(),
                    data,
                    "{n} bytes"
                );
                if n > 0 {
                    let cut = &sealed[..sealed.len() - 1];
                    assert!(read_all(&ring, cut).await.is_err(), "{n} bytes cut");
                }
            }
            // No key ring at all: the missing key is named before streaming.
            let sealed = seal_bytes(&ring, "obj", b"x");
            match open_stream(None, "obj", sealed.as_slice()).await {
                Err(OpenError::Sealed(SealError::UnknownKey { id })) => assert_eq!(id, "k1"),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("opened without a key"),
            }
        });
    }

    async fn read_all(ring: &KeyRing, sealed: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = std::pin::pin!(
            open_stream(Some(ring), "obj", sealed)
                .await
                .map_err(std::io::Error::other)?
        );
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}
