//! One body, many readers: a fetch's body shared with every caller waiting on
//! it, chunk by chunk, as it arrives.
//!
//! The [`StreamWriter`] pushes chunks (cheap `Bytes` clones, never copies);
//! each [`StreamReader`] reads them in order at its own pace, from the first
//! byte. The stream has two modes:
//!
//! - **Keeping** (the default): every chunk is retained, so a reader that
//!   attaches late still starts from byte 0, and the writer can take the
//!   whole body at the end (to store it). Bounded by the caller, who stops
//!   keeping once the body is larger than it will store.
//! - **Passing** ([`StreamWriter::stop_keeping`], effective once the lag
//!   limit has been written, so every reader woken with the head has had
//!   the time to attach from byte 0): a chunk is released once
//!   every attached reader has passed it; a reader more than the lag limit
//!   behind the fastest is cut loose (its next read fails) rather than hold
//!   the body for everyone; the writer waits for the fastest reader before
//!   pushing more ([`StreamWriter::ready`]), so what is retained stays
//!   within the lag limit plus one chunk; no new reader can attach once a
//!   chunk has been released.
//!
//! A stream that does not end with [`StreamWriter::finish`] (the writer
//! failed, or was dropped) ends every reader with an error, never as if
//! complete. No lock is held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

/// What a stream reports to whoever accounts for it (the caller's metrics).
pub trait StreamObserver: Send + Sync {
    /// The bytes retained by some stream changed by `delta`.
    fn retained(&self, delta: i64);
    /// A reader was cut loose for lagging.
    fn cut_loose(&self);
}

/// Why a reader's stream ended short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The writer's source broke before the end.
    #[error("the body broke before its end: {0}")]
    Broken(Arc<str>),
    /// The writer went away before the end.
    #[error("the body's writer went away before its end")]
    Abandoned,
    /// This reader fell more than the lag limit behind the fastest one.
    #[error("the reader fell too far behind the fastest and was cut loose")]
    CutLoose,
}

/// A handle for attaching readers; clones share the one stream.
#[derive(Clone)]
pub struct SharedStream {
    inner: Arc<Inner>,
}

/// The one writer of a stream; dropping it before [`StreamWriter::finish`]
/// ends every reader with [`StreamError::Abandoned`].
pub struct StreamWriter {
    inner: Arc<Inner>,
    ended: bool,
}

/// One reader's position in a stream; dropping it detaches the reader.
pub struct StreamReader {
    inner: Arc<Inner>,
    id: u64,
    /// Absolute index of the next chunk to read.
    next: u64,
    done: bool,
}

struct Inner {
    state: Mutex<State>,
    /// Woken when there is something new to read (a chunk, the end, a cut).
    readable: Notify,
    /// Woken when readers advance or leave (the writer may push again).
    writable: Notify,
    lag_limit: u64,
    observer: Arc<dyn StreamObserver>,
}

#[derive(Clone, Copy)]
struct Position {
    /// Absolute index of the reader's next chunk.
    next: u64,
    /// Bytes it has read.
    offset: u64,
}

struct State {
    chunks: VecDeque<Bytes>,
    /// Absolute index of `chunks[0]`.
    first_index: u64,
    /// Bytes pushed so far.
    written: u64,
    /// Bytes in `chunks`.
    retained: u64,
    end: Option<Result<(), StreamError>>,
    keeping: bool,
    /// Set by `stop_keeping`: keeping ends once more than this was written.
    keep_until: Option<u64>,
    readers: HashMap<u64, Position>,
    /// Readers cut loose that have not yet been told.
    cut: Vec<u64>,
    next_reader: u64,
}

impl State {
    fn pushed(&self) -> u64 {
        self.first_index + self.chunks.len() as u64
    }

    /// In passing mode: cuts readers too far behind the fastest, then
    /// releases every chunk all remaining readers have passed. Returns
    /// whether any reader was cut (it must be woken).
    fn settle(&mut self, inner_lag_limit: u64, observer: &dyn StreamObserver) -> bool {
        if self.keeping {
            return false;
        }
        let fastest = self.readers.values().map(|p| p.offset).max().unwrap_or(0);
        let laggards: Vec<u64> = self
            .readers
            .iter()
            .filter(|(_, p)| fastest - p.offset > inner_lag_limit)
            .map(|(id, _)| *id)
            .collect();
        for id in &laggards {
            self.readers.remove(id);
            self.cut.push(*id);
            observer.cut_loose();
        }
        let keep_from = self
            .readers
            .values()
            .map(|p| p.next)
            .min()
            .unwrap_or_else(|| self.pushed());
        let mut released = 0u64;
        while self.first_index < keep_from {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            self.first_index += 1;
            released += chunk.len() as u64;
        }
        if released > 0 {
            self.retained -= released;
            observer.retained(-(released as i64));
        }
        !laggards.is_empty()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (every
        // update is a few plain assignments): keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let retained = self.lock().retained;
        if retained > 0 {
            self.observer.retained(-(retained as i64));
        }
    }
}

/// A new stream, keeping every chunk until told otherwise; in passing mode
/// a reader more than `lag_limit` bytes behind the fastest is cut loose.
pub fn shared_stream(
    lag_limit: u64,
    observer: Arc<dyn StreamObserver>,
) -> (StreamWriter, SharedStream) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            chunks: VecDeque::new(),
            first_index: 0,
            written: 0,
            retained: 0,
            end: None,
            keeping: true,
            keep_until: None,
            readers: HashMap::new(),
            cut: Vec::new(),
            next_reader: 0,
        }),
        readable: Notify::new(),
        writable: Notify::new(),
        lag_limit,
        observer,
    });
    (
        StreamWriter {
            inner: Arc::clone(&inner),
            ended: false,
        },
        SharedStream { inner },
    )
}

impl std::fmt::Debug for SharedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStream")
            .field("retained", &self.retained())
            .finish()
    }
}

impl SharedStream {
    /// A reader from the first byte; `None` once the stream has released
    /// its start (passing mode), when the whole body can no longer be read.
    pub fn reader(&self) -> Option<StreamReader> {
        let mut state = self.inner.lock();
        if state.first_index > 0 {
            return None;
        }
        let id = state.next_reader;
        state.next_reader += 1;
        state.readers.insert(id, Position { next: 0, offset: 0 });
        Some(StreamReader {
            inner: Arc::clone(&self.inner),
            id,
            next: 0,
            done: false,
        })
    }

    /// Bytes the stream holds now.
    pub fn retained(&self) -> u64 {
        self.inner.lock().retained
    }
}

impl StreamWriter {
    /// Appends `chunk` for every reader.
    pub fn push(&self, chunk: Bytes) {
        let len = chunk.len() as u64;
        {
            let mut state = self.inner.lock();
            state.chunks.push_back(chunk);
            state.written += len;
            state.retained += len;
            if state.keep_until.is_some_and(|until| state.written > until) {
                state.keeping = false;
            }
            self.inner.observer.retained(len as i64);
            // Nobody attached in passing mode: nothing to keep it for.
            state.settle(self.inner.lag_limit, self.inner.observer.as_ref());
        }
        self.inner.readable.notify_waiters();
    }

    /// Switches to passing mode once more than the lag limit has been
    /// written (at once if it has): chunks every reader has passed are
    /// released from then on, and laggards are cut loose. Until then a
    /// reader woken with the head can still attach from byte 0, and what is
    /// retained is within the lag limit plus a chunk either way.
    pub fn stop_keeping(&self) {
        let cut = {
            let mut state = self.inner.lock();
            state.keep_until = Some(self.inner.lag_limit);
            if state.written > self.inner.lag_limit {
                state.keeping = false;
            }
            state.settle(self.inner.lag_limit, self.inner.observer.as_ref())
        };
        if cut {
            self.inner.readable.notify_waiters();
        }
    }

    /// Waits until pushing more is in order: at once while keeping; in
    /// passing mode, once the fastest reader has read everything pushed so
    /// far. Resolves to `false` when no reader is attached any more (nobody
    /// would read what comes next).
    pub async fn ready(&self) -> bool {
        loop {
            let mut notified = pin!(self.inner.writable.notified());
            notified.as_mut().enable();
            {
                let state = self.inner.lock();
                if state.keeping {
                    return true;
                }
                if state.readers.is_empty() {
                    return false;
                }
                let fastest = state.readers.values().map(|p| p.offset).max().unwrap_or(0);
                if fastest >= state.written {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// Every chunk retained, in order: the whole body while keeping.
    pub fn chunks(&self) -> Vec<Bytes> {
        self.inner.lock().chunks.iter().cloned().collect()
    }

    /// Number of readers attached now.
    pub fn readers(&self) -> usize {
        self.inner.lock().readers.len()
    }

    /// Ends the stream cleanly: readers finish once they have read it all.
    pub fn finish(mut self) {
        self.end(Ok(()));
    }

    /// Ends the stream with `error`: every reader's next read past what it
    /// has fails.
    pub fn fail(mut self, error: &str) {
        self.end(Err(StreamError::Broken(Arc::from(error))));
    }

    fn end(&mut self, end: Result<(), StreamError>) {
        self.ended = true;
        self.inner.lock().end = Some(end);
        self.inner.readable.notify_waiters();
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Err(StreamError::Abandoned));
        }
    }
}

impl StreamReader {
    /// The next chunk; `None` at a clean end; an error when the stream broke,
    /// its writer went away, or this reader was cut loose. After `None` or
    /// an error, always `None`.
    pub async fn next(&mut self) -> Option<Result<Bytes, StreamError>> {
        if self.done {
            return None;
        }
        let inner = Arc::clone(&self.inner);
        loop {
            let mut notified = pin!(inner.readable.notified());
            notified.as_mut().enable();
            let read = {
                let mut state = inner.lock();
                if let Some(at) = state.cut.iter().position(|id| *id == self.id) {
                    state.cut.swap_remove(at);
                    Read::End(Err(StreamError::CutLoose))
                } else if self.next < state.pushed() {
                    // Registered readers hold back release, so the chunk is there.
                    let index =
                        usize::try_from(self.next - state.first_index).unwrap_or(usize::MAX);
                    match state.chunks.get(index).cloned() {
                        Some(chunk) => {
                            self.next += 1;
                            if let Some(position) = state.readers.get_mut(&self.id) {
                                position.next = self.next;
                                position.offset += chunk.len() as u64;
                            }
                            let cut_others = state.settle(inner.lag_limit, inner.observer.as_ref());
                            Read::Chunk(chunk, cut_others)
                        }
                        None => Read::End(Err(StreamError::CutLoose)),
                    }
                } else {
                    match state.end.clone() {
                        Some(end) => Read::End(end),
                        None => Read::Wait,
                    }
                }
            };
            match read {
                Read::Chunk(chunk, cut_others) => {
                    inner.writable.notify_waiters();
                    if cut_others {
                        inner.readable.notify_waiters();
                    }
                    if !chunk.is_empty() {
                        return Some(Ok(chunk));
                    }
                }
                Read::End(end) => {
                    self.detach();
                    return end.err().map(Err);
                }
                Read::Wait => notified.await,
            }
        }
    }

    fn detach(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        {
            let mut state = self.inner.lock();
            state.readers.remove(&self.id);
            state.settle(self.inner.lag_limit, self.inner.observer.as_ref());
        }
        self.inner.writable.notify_waiters();
        self.inner.readable.notify_waiters();
    }
}

/// What one look at the stream found for a reader.
enum Read {
    /// Its next chunk (and whether reading it cut other readers loose).
    Chunk(Bytes, bool),
    /// The end: clean, or why not.
    End(Result<(), StreamError>),
    /// Nothing yet.
    Wait,
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

    #[derive(Default)]
    struct Count {
        retained: AtomicI64,
        cut: AtomicU64,
    }

    impl StreamObserver for Count {
        fn retained(&self, delta: i64) {
            self.retained.fetch_add(delta, Ordering::SeqCst);
        }
        fn cut_loose(&self) {
            self.cut.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn chunk(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    async fn read_all(mut reader: StreamReader) -> Result<Vec<u8>, StreamError> {
        let mut body = Vec::new();
        while let Some(chunk) = reader.next().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(body)
    }

    #[tokio::test]
    async fn every_reader_gets_every_byte_and_a_late_one_starts_from_the_first() {
        let count = Arc::new(Count::default());
        let (writer, stream) = shared_stream(1 << 20, count.clone());
        let early = tokio::spawn(read_all(stream.reader().expect("attaches")));
        writer.push(chunk(b'a', 3));
        writer.push(chunk(b'b', 2));
        let late = stream.reader().expect("keeping: attaches from byte 0");
        writer.finish();
        assert_eq!(early.await.unwrap(), Ok(b"aaabb".to_vec()));
        assert_eq!(read_all(late).await, Ok(b"aaabb".to_vec()));
        assert_eq!(count.retained.load(Ordering::SeqCst), 5);
        drop(stream);
        assert_eq!(
            count.retained.load(Ordering::SeqCst),
            0,
            "released with the stream"
        );
    }

    #[tokio::test]
    async fn a_broken_or_abandoned_stream_is_never_a_clean_end() {
        let (writer, stream) = shared_stream(1 << 20, Arc::new(Count::default()));
        let reader = stream.reader().unwrap();
        writer.push(chunk(b'a', 1));
        writer.fail("reset by peer");
        assert!(matches!(
            read_all(reader).await,
            Err(StreamError::Broken(_))
        ));

        let (writer, stream) = shared_stream(1 << 20, Arc::new(Count::default()));
        let reader = stream.reader().unwrap();
        writer.push(chunk(b'a', 1));
        drop(writer);
        assert_eq!(read_all(reader).await, Err(StreamError::Abandoned));
    }

    #[tokio::test]
    async fn passing_releases_what_every_reader_passed_and_cuts_a_laggard_loose() {
        let count = Arc::new(Count::default());
        let (writer, stream) = shared_stream(10, count.clone());
        let mut fast = stream.reader().unwrap();
        let mut stalled = stream.reader().unwrap();
        writer.stop_keeping();
        for _ in 0..4 {
            assert!(writer.ready().await);
            writer.push(chunk(b'x', 4));
            assert_eq!(fast.next().await.unwrap().unwrap().len(), 4);
            // Retained never exceeds the lag limit plus one chunk.
            assert!(count.retained.load(Ordering::SeqCst) <= 10 + 4);
        }
        assert_eq!(
            count.cut.load(Ordering::SeqCst),
            1,
            "12 bytes behind: cut loose"
        );
        assert_eq!(stalled.next().await, Some(Err(StreamError::CutLoose)));
        assert!(stream.reader().is_none(), "its start is released");
        assert_eq!(
            count.retained.load(Ordering::SeqCst),
            0,
            "the fast one passed all"
        );
        drop(fast);
        assert!(!writer.ready().await, "nobody left to read");
    }
}
