//! Where log lines go: one bounded, batched buffer that a writer thread
//! empties, shared by `tracing`'s events and the access log.
//!
//! # Why not a line per wake-up
//!
//! An access line is written for every request, so its cost is paid at the
//! proxy's request rate. A channel send per line that wakes a writer thread
//! per line (tracing-appender's design) costs a futex wake-up and a context
//! switch per request on a busy core, and formatting through `tracing`'s
//! field visitors costs more than the line itself. Here a request appends
//! its pre-formatted line to a shared buffer under a short lock and never
//! wakes anyone, except the first line after a flush and a buffer past
//! [`FLUSH_BYTES`]; the writer thread wakes at most every
//! [`FLUSH_INTERVAL`] and writes everything pending in one `write`.
//!
//! # Guarantees
//!
//! - Lines are whole: every line is appended in one piece, so lines from
//!   tracing and from the access log never interleave mid-line.
//! - A request never waits on the output: when the writer is more than
//!   [`MAX_PENDING_BYTES`] behind (a blocked pipe, a full disk), new lines
//!   are dropped and counted, and the writer reports how many once it
//!   catches up.
//! - [`LogWriterGuard`] flushes what is pending when dropped, so a clean exit
//!   loses nothing. A killed process loses at most the last
//!   [`FLUSH_INTERVAL`] of lines.
//!
//! # Access lines
//!
//! [`LogSink::access`] writes the same fields as the event corral used to
//! emit through `tracing` (target `corral::access`: `method`, `path`,
//! `status`, `cache_status`, `duration_ms`, `bytes`), in the same two forms as
//! the rest of the log ([`LogFormat`]): tracing-subscriber's text layout, or
//! its JSON object. The timestamp's date and time of day are formatted once
//! per second, and a line's wall-clock time is read off the monotonic moment
//! the request already took ([`AccessEntry::at`]) against a pair of clock
//! readings renewed once per second, so a line reads no clock of its own.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest a line waits in the buffer before the writer takes it.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Pending bytes past which the writer is woken at once.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// Pending bytes past which new lines are dropped (and counted) rather than
/// held: the writer is that far behind.
pub const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;

/// The two line layouts, the same for every line the sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-02T03:38:20.866115Z  INFO target: message key=value ...`
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields`, `target`.
    Json,
}

/// One request, as the access log records it.
#[derive(Debug, Clone, Copy)]
pub struct AccessEntry<'a> {
    /// The request method.
    pub method: &'a str,
    /// The request path (no query: queries may carry secrets).
    pub path: &'a str,
    /// The status code sent.
    pub status: u16,
    /// How corral handled it (the `cache_status` metric label): one of
    /// corral's own fixed labels, never client text, so it is written as it
    /// is.
    pub cache_status: &'static str,
    /// From the request's head to its response head, in microseconds.
    pub duration_micros: u64,
    /// When the response head was ready: the line's timestamp.
    pub at: Instant,
    /// Body length, when known before it is sent.
    pub bytes: Option<u64>,
}

/// A handle to the shared buffer. Cheap to clone; every clone appends to the
/// same buffer.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when the writer should look: the buffer went from empty to
    /// non-empty, passed [`FLUSH_BYTES`], or the sink is closing.
    wake: Condvar,
    format: LogFormat,
}

struct Pending {
    lines: Vec<u8>,
    /// Lines refused since the writer last reported.
    dropped: u64,
    closing: bool,
    /// The second [`Pending::stamp`] was formatted for.
    stamp_second: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `stamp_second`.
    stamp: [u8; 19],
    /// A monotonic moment and the wall-clock time then, in microseconds
    /// since the epoch, read together at most once per second.
    clock: Option<(Instant, u64)>,
}

impl LogSink {
    /// A sink whose lines `output` receives from a thread of its own, in
    /// `format`. Dropping the guard flushes and stops the thread.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn(
        output: impl Write + Send + 'static,
        format: LogFormat,
    ) -> io::Result<(LogSink, LogWriterGuard)> {
        let sink = LogSink {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending {
                    lines: Vec::with_capacity(FLUSH_BYTES),
                    dropped: 0,
                    closing: false,
                    stamp_second: u64::MAX,
                    stamp: [b'0'; 19],
                    clock: None,
                }),
                wake: Condvar::new(),
                format,
            }),
        };
        let writer = sink.clone();
        let thread = std::thread::Builder::new()
            .name("corral-log".into())
            .spawn(move || writer.write_until_closed(output))?;
        Ok((
            sink.clone(),
            LogWriterGuard {
                sink,
                thread: Some(thread),
            },
        ))
    }

    /// The layout every line of this sink uses.
    pub fn format(&self) -> LogFormat {
        self.shared.format
    }

    /// Appends `line` (which must end with a newline) whole, or drops it if
    /// the writer is too far behind.
    pub fn append(&self, line: &[u8]) {
        let mut pending = self.lock();
        if !pending.admit(line.len()) {
            return;
        }
        let before = pending.lines.len();
        pending.lines.extend_from_slice(line);
        self.after_append(pending, before);
    }

    /// Appends one access line for `entry`, formatted in place.
    pub fn access(&self, entry: &AccessEntry<'_>) {
        let mut pending = self.lock();
        // A generous bound on the line: fixed text plus the variable fields.
        let most = 192 + 6 * (entry.path.len() + entry.method.len() + entry.cache_status.len());
        if !pending.admit(most) {
            return;
        }
        let before = pending.lines.len();
        let wall = pending.wall_micros(entry.at);
        pending.refresh_stamp(wall / 1_000_000);
        let Pending { lines, stamp, .. } = &mut *pending;
        let micros = (wall % 1_000_000) as u32;
        write_access(lines, self.shared.format, stamp, micros, entry);
        self.after_append(pending, before);
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every update leaves the buffer whole lines long: a panic while it
        // was held cannot have left half a line behind that matters more
        // than losing the log.
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the writer when this append, which found `before` bytes
    /// pending, is the first since a flush (it then waits [`FLUSH_INTERVAL`]
    /// for more) or the one that filled a batch. Only then: a notify is a
    /// system call even when nobody waits, and the appends that follow a
    /// full batch, until the writer takes it, need not repeat it.
    fn after_append(&self, pending: MutexGuard<'_, Pending>, before: usize) {
        let filled = before < FLUSH_BYTES && pending.lines.len() >= FLUSH_BYTES;
        drop(pending);
        if before == 0 || filled {
            self.shared.wake.notify_one();
        }
    }

    /// The writer thread: waits for lines, lets a batch gather, writes it.
    fn write_until_closed(&self, mut output: impl Write) {
        let mut batch = Vec::with_capacity(FLUSH_BYTES);
        loop {
            let mut pending = self.lock();
            while pending.lines.is_empty() && pending.dropped == 0 && !pending.closing {
                pending = self
                    .shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if !pending.closing && pending.lines.len() < FLUSH_BYTES {
                // Let the batch gather; an append past FLUSH_BYTES or the
                // guard's drop cuts this short.
                pending = self
                    .shared
                    .wake
                    .wait_timeout_while(pending, FLUSH_INTERVAL, |p| {
                        !p.closing && p.lines.len() < FLUSH_BYTES
                    })
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut batch, &mut pending.lines);
            let dropped = std::mem::take(&mut pending.dropped);
            let closing = pending.closing;
            if !closing && pending.lines.capacity() < FLUSH_BYTES {
                pending.lines.reserve(FLUSH_BYTES);
            }
            drop(pending);
            if dropped > 0 {
                let _ = writeln!(
                    batch,
                    "corral: {dropped} log lines dropped: the log output could not keep up"
                );
            }
            // A broken log output must not stop the proxy; nothing else can
            // be done with the lines.
            let _ = output.write_all(&batch).and_then(|()| output.flush());
            batch.clear();
            if closing {
                return;
            }
        }
    }
}

impl Pending {
    /// Whether `bytes` more may be held; counts a refusal.
    fn admit(&mut self, bytes: usize) -> bool {
        if self.lines.len() + bytes > MAX_PENDING_BYTES {
            self.dropped += 1;
            return false;
        }
        true
    }

    /// Wall-clock microseconds since the epoch at `at`, from the clock pair
    /// when `at` lies within a second of it (either side: another thread
    /// may have renewed it after `at` was taken), else from a new pair.
    fn wall_micros(&mut self, at: Instant) -> u64 {
        if let Some(pair) = self.clock {
            let (wall, apart) = wall_at(pair, at);
            if apart < Duration::from_secs(1) {
                return wall;
            }
        }
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let pair = (Instant::now(), u64::try_from(wall.as_micros()).unwrap_or(0));
        self.clock = Some(pair);
        wall_at(pair, at).0
    }

    fn refresh_stamp(&mut self, second: u64) {
        if self.stamp_second == second {
            return;
        }
        let when = UNIX_EPOCH + Duration::from_secs(second);
        let mut text = Vec::with_capacity(20);
        // `2026-12-02T03:38:20Z`: the first 19 bytes are what we keep.
        let _ = write!(text, "{}", humantime::format_rfc3339_seconds(when));
        if let Some(prefix) = text.get(..19) {
            self.stamp.copy_from_slice(prefix);
            self.stamp_second = second;
        }
    }
}

/// The wall-clock microseconds at `at`, read off a (monotonic, wall) pair,
/// and how far `at` lies from the pair.
fn wall_at((then, wall): (Instant, u64), at: Instant) -> (u64, Duration) {
    match at.checked_duration_since(then) {
        Some(after) => (wall + after.as_micros() as u64, after),
        None => {
            let before = then - at;
            (wall.saturating_sub(before.as_micros() as u64), before)
        }
    }
}

/// Flushes the sink and stops its writer thread when dropped.
pub struct LogWriterGuard {
    sink: LogSink,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        self.sink.lock().closing = true;
        self.sink.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What `tracing`'s formatter writes one event through: each `write` is a
/// whole formatted event (tracing-subscriber formats an event into one
/// buffer and writes it with one `write_all`), appended whole.
pub struct EventWriter<'a> {
    sink: &'a LogSink,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter { sink: self }
    }
}

static ACCESS_LOG: OnceLock<LogSink> = OnceLock::new();

/// Makes `sink` the process's access log (the binary does this once at
/// start-up, when its log filter lets `corral::access` through). Returns
/// false if one was installed already; that one stays.
pub fn install_access_log(sink: LogSink) -> bool {
    ACCESS_LOG.set(sink).is_ok()
}

/// The process's access log, if one was installed: none in a library user
/// (or a test) that did not ask for one.
pub fn access_log() -> Option<&'static LogSink> {
    ACCESS_LOG.get()
}

/// Formats one access line into `out`.
fn write_access(
    out: &mut Vec<u8>,
    format: LogFormat,
    stamp: &[u8; 19],
    micros: u32,
    entry: &AccessEntry<'_>,
) {
    let mut numbers = itoa::Buffer::new();
    match format {
        LogFormat::Text => {
            write_timestamp(out, stamp, micros);
            out.extend_from_slice(b"  INFO corral::access: method=");
            out.extend_from_slice(entry.method.as_bytes());
            out.extend_from_slice(b" path=");
            write_quoted(out, entry.path, Escape::Debug);
            out.extend_from_slice(b" status=");
            out.extend_from_slice(numbers.format(entry.status).as_bytes());
            out.extend_from_slice(b" cache_status=\"");
            out.extend_from_slice(entry.cache_status.as_bytes());
            out.push(b'"');
            out.extend_from_slice(b" duration_ms=");
            write_millis(out, entry.duration_micros);
            if let Some(bytes) = entry.bytes {
                out.extend_from_slice(b" bytes=");
                out.extend_from_slice(numbers.format(bytes).as_bytes());
            }
        }
        LogFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            write_timestamp(out, stamp, micros);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"method\":");
            write_quoted(out, entry.method, Escape::Json);
            out.extend_from_slice(b",\"path\":");
            write_quoted(out, entry.path, Escape::Json);
            out.extend_from_slice(b",\"status\":");
            out.extend_from_slice(numbers.format(entry.status).as_bytes());
            out.extend_from_slice(b",\"cache_status\":\"");
            out.extend_from_slice(entry.cache_status.as_bytes());
            out.push(b'"');
            out.extend_from_slice(b",\"duration_ms\":");
            write_millis(out, entry.duration_micros);
            if let Some(bytes) = entry.bytes {
                out.extend_from_slice(b",\"bytes\":");
                out.extend_from_slice(numbers.format(bytes).as_bytes());
            }
            out.extend_from_slice(b"},\"target\":\"corral::access\"}");
        }
    }
    out.push(b'\n');
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`, as tracing-subscriber writes it.
fn write_timestamp(out: &mut Vec<u8>, stamp: &[u8; 19], micros: u32) {
    out.extend_from_slice(stamp);
    // Six digits, zero-padded: a seventh leading digit is written and cut.
    let mut numbers = itoa::Buffer::new();
    let padded = numbers.format(1_000_000 + micros.min(999_999));
    out.push(b'.');
    out.extend_from_slice(&padded.as_bytes()[1..]);
    out.push(b'Z');
}

/// Microseconds as milliseconds with three decimals: `0.050`, `12.345`.
fn write_millis(out: &mut Vec<u8>, micros: u64) {
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(numbers.format(micros / 1000).as_bytes());
    let fraction = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

/// How a quoted string's special characters are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// As Rust's `Debug` for `str` does (tracing's text layout).
    Debug,
    /// As JSON requires.
    Json,
}

/// The bytes a quoted value may hold as they are: printable ASCII but the
/// quote and the backslash.
static PRINTABLE_ASCII: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = b' ';
    while byte <= b'~' {
        table[byte as usize] = byte != b'"' && byte != b'\\';
        byte += 1;
    }
    table
};

/// `value` in double quotes, escaped so a hostile path cannot end the field
/// early, forge another field or break the line.
fn write_quoted(out: &mut Vec<u8>, value: &str, escape: Escape) {
    out.push(b'"');
    let plain = |c: char| c != '"' && c != '\\' && !c.is_control();
    // Printable ASCII, what nearly every path is, is checked a byte at a
    // time against a table; anything else is decoded.
    let printable = |b: &u8| PRINTABLE_ASCII[usize::from(*b)];
    if value.as_bytes().iter().all(printable) || value.chars().all(plain) {
        out.extend_from_slice(value.as_bytes());
    } else {
        for c in value.chars() {
            if plain(c) {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                continue;
            }
            match (c, escape) {
                ('"', _) => out.extend_from_slice(b"\\\""),
                ('\\', _) => out.extend_from_slice(b"\\\\"),
                ('\n', _) => out.extend_from_slice(b"\\n"),
                ('\r', _) => out.extend_from_slice(b"\\r"),
                ('\t', _) => out.extend_from_slice(b"\\t"),
                (c, Escape::Debug) => {
                    let _ = write!(out, "{}", c.escape_debug());
                }
                (c, Escape::Json) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: LogFormat, entry: &AccessEntry<'_>) -> String {
        let mut stamp = [0; 19];
        stamp.copy_from_slice(b"2026-12-02T03:38:20");
        let mut out = Vec::new();
        write_access(&mut out, format, &stamp, 866_115, entry);
        String::from_utf8(out).unwrap()
    }

    fn hit() -> AccessEntry<'static> {
        AccessEntry {
            method: "GET",
            path: "/obj/hot",
            status: 200,
            cache_status: "hit",
            duration_micros: 50,
            bytes: Some(1024),
            at: Instant::now(),
        }
    }

    #[test]
    fn text_lines_keep_tracing_layout_and_fields() {
        assert_eq!(
            line(LogFormat::Text, &hit()),
            "2026-12-02T03:38:20.866115Z  INFO corral::access: method=GET path=\"/obj/hot\" \
             status=200 cache_status=\"hit\" duration_ms=0.050 bytes=1024\n"
        );
        let unknown_length = AccessEntry {
            bytes: None,
            duration_micros: 12_345_678,
            ..hit()
        };
        assert!(
            line(LogFormat::Text, &unknown_length)
                .ends_with("cache_status=\"hit\" duration_ms=12345.678\n")
        );
    }

    #[test]
    fn json_lines_are_json_with_tracing_fields() {
        let text = line(LogFormat::Json, &hit());
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["timestamp"], "2026-12-02T03:38:20.866115Z");
        assert_eq!(parsed["level"], "INFO");
        assert_eq!(parsed["target"], "corral::access");
        let fields = &parsed["fields"];
        assert_eq!(fields["method"], "GET");
        assert_eq!(fields["path"], "/obj/hot");
        assert_eq!(fields["status"], 200);
        assert_eq!(fields["cache_status"], "hit");
        assert_eq!(fields["duration_ms"], 0.05);
        assert_eq!(fields["bytes"], 1024);
    }

    #[test]
    fn a_lines_wall_time_is_read_off_its_moment() {
        let (sink, _guard) = LogSink::spawn(io::sink(), LogFormat::Text).unwrap();
        let mut pending = sink.lock();
        let wall = |now: SystemTime| now.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let before = wall(SystemTime::now());
        let start = Instant::now();
        let first = pending.wall_micros(start);
        let after = wall(SystemTime::now());
        // The pair's two readings are moments apart, not one instant: a
        // second of slack keeps a preempted test from failing.
        let slack = 1_000_000;
        assert!(
            (before - slack..=after + slack).contains(&first),
            "{before} <= {first} <= {after}"
        );
        let (then, paired) = pending.clock.unwrap();
        // Within a second of the pair, either side: read off it, no clock.
        let later = then + Duration::from_millis(250);
        assert_eq!(pending.wall_micros(later), paired + 250_000);
        assert_eq!(pending.clock, Some((then, paired)));
        let earlier = then - Duration::from_millis(40);
        assert_eq!(pending.wall_micros(earlier), paired - 40_000);
        // A second or more past it: a new pair.
        let _ = pending.wall_micros(then + Duration::from_secs(2));
        assert_ne!(pending.clock.unwrap().0, then);
    }

    #[test]
    fn a_hostile_path_cannot_forge_fields_or_lines() {
        let path = "/a\" status=999 \\\n{\"x\":1}\u{7f}";
        let hostile = AccessEntry { path, ..hit() };
        let text = line(LogFormat::Text, &hostile);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(
            text.contains(r#"path="/a\" status=999 \\\n{\"x\":1}\u{7f}""#),
            "{text}"
        );
        let json = line(LogFormat::Json, &hostile);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["fields"]["path"], path);
        assert_eq!(parsed["fields"]["status"], 200);
    }

    /// A writer that reports each write as it starts, holds it until the
    /// test lets it go, then hands its bytes to the test.
    struct Gated {
        entered: std::sync::mpsc::Sender<()>,
        gate: std::sync::mpsc::Receiver<()>,
        written: std::sync::mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            // Once the test drops its end, every later write passes at once.
            let _ = self.gate.recv();
            let _ = self.written.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_gathered_while_the_writer_is_busy_leave_in_one_write() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (open, gate) = std::sync::mpsc::channel();
        let (written_tx, written) = std::sync::mpsc::channel();
        let output = Gated {
            entered: entered_tx,
            gate,
            written: written_tx,
        };
        let (sink, guard) = LogSink::spawn(output, LogFormat::Text).unwrap();
        sink.append(b"first\n");
        // The writer has taken "first" and is inside its write.
        entered.recv().unwrap();
        for _ in 0..1000 {
            sink.access(&hit());
        }
        sink.append(b"an event\n");
        drop(open);
        drop(guard);
        let writes: Vec<Vec<u8>> = written.try_iter().collect();
        assert_eq!(writes.len(), 2, "one write per batch");
        assert_eq!(writes[0], b"first\n");
        let text = String::from_utf8(writes[1].clone()).unwrap();
        assert_eq!(text.lines().count(), 1001);
        assert!(text.lines().take(1000).all(|l| l.ends_with("bytes=1024")));
        assert!(text.ends_with("an event\n"), "whole lines, in order");
    }

    #[test]
    fn a_writer_that_cannot_keep_up_costs_lines_not_memory() {
        /// Reports each write as it starts, then blocks it until the test
        /// lets it go.
        struct Stuck {
            entered: std::sync::mpsc::Sender<()>,
            gate: std::sync::mpsc::Receiver<()>,
        }
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let _ = self.entered.send(());
                let _ = self.gate.recv();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, gate) = std::sync::mpsc::channel();
        let stuck = Stuck {
            entered: entered_tx,
            gate,
        };
        let (sink, guard) = LogSink::spawn(stuck, LogFormat::Text).unwrap();
        sink.append(b"first\n");
        // The writer has taken "first" and is stuck writing it: it cannot
        // take the flood below, nor the count of lines it drops.
        entered.recv().unwrap();
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        // Far more than MAX_PENDING_BYTES while the writer is stuck.
        for _ in 0..(3 * MAX_PENDING_BYTES / line.len()) {
            sink.append(&line);
        }
        let (held, dropped) = {
            let pending = sink.lock();
            (pending.lines.len(), pending.dropped)
        };
        // Let the writer go before asserting: a failed assertion must fail
        // the test, not leave it waiting on a stuck writer.
        drop(release);
        drop(guard);
        assert!(held <= MAX_PENDING_BYTES, "{held} bytes held");
        assert!(
            dropped >= (2 * MAX_PENDING_BYTES / line.len()) as u64,
            "{dropped} lines dropped"
        );
    }
}
