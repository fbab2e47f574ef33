//! Helper for programs that take part in ferry's *cooperative* checkpoint protocol.
//!
//! A program that wants to be migrated without CRIU saves its own state when the ferry agent
//! asks for it. This crate speaks the agent's side of that conversation for the program; the
//! program only supplies a callback that writes its state files into a directory.
//!
//! # Protocol
//!
//! - The agent starts the program with `FERRY_CONTROL=<path>`: a UNIX **stream** socket on which
//!   the agent listens. The program connects to it ([`serve`] does this in a background thread).
//! - On a migration target the program also gets `FERRY_RESTORE=<dir>` ([`restore_dir`]): the
//!   files it saved on the source. The program must load its state from there before working.
//! - Every message is one line of UTF-8 JSON terminated by `\n`.
//! - Right after connecting the helper sends
//!   `{"op":"hello","pid":<getpid()>,"restored":<true|false>}`. When `FERRY_RESTORE` is set this
//!   must only happen after the state was loaded, so call [`serve`] after restoring.
//! - The agent may then send, at any time and any number of times,
//!   `{"op":"checkpoint","dir":"<absolute dir path>"}`. The helper calls the save callback with
//!   that (existing, empty) directory and answers `{"ok":true}`, or
//!   `{"ok":false,"error":"<message>"}` when the callback failed. After `ok` the agent SIGSTOPs
//!   the program and later either kills it or, if the migration rolled back, SIGCONTs it, in
//!   which case the program simply continues.
//! - Unknown ops are answered `{"ok":false,"error":"unknown op <op>"}`; malformed lines get the
//!   same shape with a description. The connection stays up either way.
//! - Without `FERRY_CONTROL` the helper does nothing. If connecting fails it prints one line to
//!   stderr and the program carries on without cooperative checkpointing.
//!
//! The callback runs on the helper's thread, concurrently with the program's own threads: guard
//! the state with a lock so that what gets saved is a consistent snapshot.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//!
//! let count = match ferry_coop::restore_dir() {
//!     Some(dir) => std::fs::read_to_string(dir.join("state.txt"))?.trim().parse().unwrap(),
//!     None => 0u64,
//! };
//! let state = Arc::new(Mutex::new(count));
//! let shared = Arc::clone(&state);
//! // Only now, with the state loaded, announce ourselves to the agent.
//! ferry_coop::serve(move |dir| {
//!     let count = shared.lock().unwrap();
//!     std::fs::write(dir.join("state.txt"), count.to_string())
//! })?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::any::Any;
use std::env;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};

/// Environment variable holding the path of the agent's control socket.
pub const CONTROL_ENV: &str = "FERRY_CONTROL";
/// Environment variable holding the directory to restore state from (migration targets only).
pub const RESTORE_ENV: &str = "FERRY_RESTORE";

/// The directory to load saved state from, when this process is the target of a migration.
///
/// `None` (also for an empty `FERRY_RESTORE`) means: start from scratch.
pub fn restore_dir() -> Option<PathBuf> {
    env::var_os(RESTORE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Connects to the agent in a background thread and answers its checkpoint requests with `save`.
///
/// Call this once, after any state from [`restore_dir`] has been loaded: the `hello` sent on
/// connecting tells the agent the program is ready. Returns `Ok(None)` when `FERRY_CONTROL` is
/// unset; otherwise the handle of the helper thread, which ends when the agent closes the
/// connection (or, after one line on stderr, when connecting fails). The only error is failing
/// to spawn the thread.
pub fn serve<F>(save: F) -> io::Result<Option<JoinHandle<()>>>
where
    F: FnMut(&Path) -> io::Result<()> + Send + 'static,
{
    match env::var_os(CONTROL_ENV).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(control) => serve_at(PathBuf::from(control), restore_dir().is_some(), save).map(Some),
    }
}

/// [`serve`] without the environment, so tests can point it at their own socket.
fn serve_at<F>(control: PathBuf, restored: bool, save: F) -> io::Result<JoinHandle<()>>
where
    F: FnMut(&Path) -> io::Result<()> + Send + 'static,
{
    thread::Builder::new().name("ferry-coop".into()).spawn(move || {
        let stream = match UnixStream::connect(&control) {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!(
                    "ferry-coop: cannot connect to {CONTROL_ENV}={}: {e}; running without \
                     cooperative checkpointing",
                    control.display()
                );
                return;
            }
        };
        if let Err(e) = session(stream, std::process::id(), restored, save) {
            eprintln!(
                "ferry-coop: control connection {} failed: {e}; no further checkpoints",
                control.display()
            );
        }
    })
}

/// Sends `hello`, then answers request lines until the agent hangs up.
fn session<F>(stream: UnixStream, pid: u32, restored: bool, mut save: F) -> io::Result<()>
where
    F: FnMut(&Path) -> io::Result<()>,
{
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(hello_line(pid, restored).as_bytes())?;
    // Raw bytes rather than read_line: invalid UTF-8 must get an error reply, not end the session.
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(()); // The agent closed the connection: nothing more will be asked.
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let reply = match parse_request(&line) {
            Ok(Request::Checkpoint { dir }) => match run_save(&mut save, &dir) {
                Ok(()) => ok_line(),
                Err(msg) => error_line(&msg),
            },
            Ok(Request::Unknown { op }) => error_line(&format!("unknown op {op}")),
            Err(msg) => error_line(&msg),
        };
        writer.write_all(reply.as_bytes())?;
    }
}

/// Runs the callback; a panic becomes an error reply, so the agent is not left waiting forever.
fn run_save<F>(save: &mut F, dir: &Path) -> Result<(), String>
where
    F: FnMut(&Path) -> io::Result<()>,
{
    match panic::catch_unwind(AssertUnwindSafe(|| save(dir))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("save into {} failed: {e}", dir.display())),
        Err(payload) => {
            Err(format!("save into {} panicked: {}", dir.display(), panic_message(&*payload)))
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// A request from the agent.
#[derive(Debug, PartialEq)]
enum Request {
    Checkpoint { dir: PathBuf },
    Unknown { op: String },
}

/// Parses one request line (without its `\n`); the error is the text of the error reply.
fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("malformed line: not UTF-8 ({e})"))?;
    let fields = parse_object(text).map_err(|e| format!("malformed line: {e}"))?;
    let op = match string_field(&fields, "op") {
        Some(op) => op,
        None => return Err("malformed line: missing \"op\" string field".into()),
    };
    if op != "checkpoint" {
        return Ok(Request::Unknown { op: op.to_owned() });
    }
    match string_field(&fields, "dir") {
        // A relative path would resolve against our cwd, which means nothing to the agent.
        Some(dir) if Path::new(dir).is_absolute() => Ok(Request::Checkpoint { dir: dir.into() }),
        Some(dir) => Err(format!("checkpoint dir must be an absolute path, got {dir:?}")),
        None => Err("checkpoint needs a \"dir\" string field".into()),
    }
}

fn string_field<'a>(fields: &'a [(String, Value)], key: &str) -> Option<&'a str> {
    // Last occurrence wins for duplicate keys, as in most JSON libraries.
    match fields.iter().rev().find(|(k, _)| k == key) {
        Some((_, Value::Str(s))) => Some(s),
        _ => None,
    }
}

fn hello_line(pid: u32, restored: bool) -> String {
    format!("{{\"op\":\"hello\",\"pid\":{pid},\"restored\":{restored}}}\n")
}

fn ok_line() -> String {
    "{\"ok\":true}\n".to_owned()
}

fn error_line(msg: &str) -> String {
    let mut out = String::from("{\"ok\":false,\"error\":");
    push_json_string(&mut out, msg);
    out.push_str("}\n");
    out
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Other control characters would break the line framing or be invalid JSON.
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON value as far as requests care: strings are kept, everything else is only validated.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Other,
}

/// Parses a line holding exactly one JSON object into its top-level fields.
fn parse_object(text: &str) -> Result<Vec<(String, Value)>, String> {
    let mut p = Parser { text, pos: 0 };
    p.skip_ws();
    if p.peek() != Some(b'{') {
        return Err(p.error("expected a JSON object"));
    }
    let fields = p.object(0)?;
    p.skip_ws();
    if p.pos != text.len() {
        return Err(p.error("trailing data after the object"));
    }
    Ok(fields)
}

/// Nesting bound, so a hostile line cannot overflow the helper thread's stack.
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{}'", byte as char)))
        }
    }

    /// `{ "key": value, ... }`; the caller has seen the `{`.
    fn object(&mut self, depth: usize) -> Result<Vec<(String, Value)>, String> {
        if depth >= MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.expect(b'{')?;
        let mut fields = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(fields);
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value(depth)?;
            fields.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(fields);
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.expect(b'[')?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        match self.peek() {
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'{') => self.object(depth + 1).map(|_| Value::Other),
            Some(b'[') => self.array(depth + 1).map(|_| Value::Other),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a value")),
        }
    }

    fn literal(&mut self, word: &str) -> Result<Value, String> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(Value::Other)
        } else {
            Err(self.error(&format!("expected '{word}'")))
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Value, String> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.required_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.required_digits()?;
        }
        Ok(Value::Other)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), String> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.error("expected a digit"));
        }
        self.digits();
        Ok(())
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run of plain characters in one go; '"' and '\\' are ASCII, so the slice
            // boundaries are always char boundaries.
            let start = self.pos;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            out.push_str(&self.text[start..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    out.push(self.escape()?);
                }
                Some(_) => return Err(self.error("control character in string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    /// The character of the escape after a `\`.
    fn escape(&mut self) -> Result<char, String> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                return self.unicode_escape();
            }
            _ => return Err(self.error("invalid escape")),
        };
        self.pos += 1;
        Ok(c)
    }

    /// `XXXX` after `\u`, including a following `\uXXXX` low surrogate for non-BMP characters.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.text[self.pos..].starts_with("\\u") {
                    return Err(self.error("unpaired surrogate in \\u escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("unpaired surrogate in \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("unpaired surrogate in \\u escape")),
            code => code,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.text.get(self.pos..self.pos + 4).unwrap_or("");
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("expected 4 hex digits in \\u escape"));
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).map_err(|e| self.error(&e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn req(line: &str) -> Result<Request, String> {
        parse_request(line.as_bytes())
    }

    #[test]
    fn parses_checkpoint() {
        assert_eq!(
            req(r#"{"op":"checkpoint","dir":"/tmp/x"}"#),
            Ok(Request::Checkpoint { dir: "/tmp/x".into() })
        );
        // Whitespace, extra fields of every kind and key order do not matter.
        assert_eq!(
            req(r#" { "dir" : "/a" , "n": -1.5e3, "t":true, "f":false, "z":null,
                    "o":{"op":"x","l":[1,[],{}]}, "op":"checkpoint" } "#),
            Ok(Request::Checkpoint { dir: "/a".into() })
        );
    }

    #[test]
    fn decodes_string_escapes() {
        assert_eq!(
            req(r#"{"op":"checkpoint","dir":"/we\"ird\\dir\/\u00e9\ud83d\ude00\n"}"#),
            Ok(Request::Checkpoint { dir: "/we\"ird\\dir/é😀\n".into() })
        );
    }

    #[test]
    fn unknown_op() {
        assert_eq!(req(r#"{"op":"dance"}"#), Ok(Request::Unknown { op: "dance".into() }));
    }

    #[test]
    fn rejects_malformed_lines() {
        for (line, want) in [
            ("", "expected a JSON object at byte 0"),
            ("not json", "expected a JSON object at byte 0"),
            ("[1]", "expected a JSON object"),
            (r#"{"op" "checkpoint"}"#, "expected ':' at byte 6"),
            (r#"{"op":"checkpoint""#, "expected ',' or '}' at byte 18"),
            (r#"{"op":"checkpoint","dir":"/x"} x"#, "trailing data"),
            (r#"{"op":"chec"#, "unterminated string"),
            (r#"{"op":"a\qb"}"#, "invalid escape"),
            (r#"{"op":"\ud800"}"#, "unpaired surrogate"),
            (r#"{"op":01}"#, "expected ',' or '}'"),
            (r#"{"op":tru}"#, "expected 'true'"),
            ("{\"op\":\"a\tb\"}", "control character"),
            (r#"{"dir":"/x"}"#, "missing \"op\""),
            (r#"{"op":1}"#, "missing \"op\""),
            (r#"{"op":"checkpoint"}"#, "needs a \"dir\""),
            (r#"{"op":"checkpoint","dir":"rel/x"}"#, "must be an absolute path, got \"rel/x\""),
        ] {
            let err = req(line).expect_err(line);
            assert!(err.contains(want), "{line:?}: {err:?} does not contain {want:?}");
        }
        let deep = format!("{{\"op\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(req(&deep).unwrap_err().contains("nested too deeply"));
        assert!(parse_request(b"{\"op\":\"\xff\"}").unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn encodes_lines() {
        assert_eq!(hello_line(42, true), "{\"op\":\"hello\",\"pid\":42,\"restored\":true}\n");
        assert_eq!(hello_line(7, false), "{\"op\":\"hello\",\"pid\":7,\"restored\":false}\n");
        assert_eq!(ok_line(), "{\"ok\":true}\n");
        let msg = "a \"quoted\" \\path\\\nnext\ttab\u{1}é";
        let line = error_line(msg);
        assert_eq!(
            line,
            "{\"ok\":false,\"error\":\"a \\\"quoted\\\" \\\\path\\\\\\nnext\\ttab\\u0001é\"}\n"
        );
        // The encoder's output is exactly one line and parses back to the same text.
        assert_eq!(line.matches('\n').count(), 1);
        let fields = parse_object(line.trim_end()).unwrap();
        assert_eq!(string_field(&fields, "error"), Some(msg));
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = env::temp_dir().join(format!("ferry-coop-{}-{n}", std::process::id()));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The agent's side of one connection.
    struct Agent {
        reader: BufReader<UnixStream>,
        writer: UnixStream,
    }

    impl Agent {
        fn send(&mut self, line: &str) {
            self.writer.write_all(line.as_bytes()).unwrap();
        }

        fn recv(&mut self) -> String {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            line
        }
    }

    fn start(
        restored: bool,
        save: impl FnMut(&Path) -> io::Result<()> + Send + 'static,
    ) -> (TempDir, Agent, JoinHandle<()>) {
        let tmp = TempDir::new();
        let sock = tmp.0.join("control.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let handle = serve_at(sock, restored, save).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let agent = Agent { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream };
        (tmp, agent, handle)
    }

    #[test]
    fn serves_checkpoints_over_a_socket() {
        let (tmp, mut agent, handle) = start(false, |dir: &Path| {
            if dir.ends_with("fail") {
                return Err(io::Error::other("disk on fire"));
            }
            if dir.ends_with("panic") {
                panic!("callback exploded");
            }
            fs::write(dir.join("state.txt"), "41\n")
        });
        assert_eq!(
            agent.recv(),
            format!("{{\"op\":\"hello\",\"pid\":{},\"restored\":false}}\n", std::process::id())
        );

        // Several checkpoints on one connection, as after a rolled-back migration.
        for name in ["one", "two"] {
            let dir = tmp.0.join(name);
            fs::create_dir(&dir).unwrap();
            // The request arrives in two pieces: framing is by '\n', not by read().
            let line = format!("{{\"op\":\"checkpoint\",\"dir\":\"{}\"}}\n", dir.display());
            let (a, b) = line.split_at(10);
            agent.send(a);
            std::thread::sleep(Duration::from_millis(20));
            agent.send(b);
            assert_eq!(agent.recv(), "{\"ok\":true}\n");
            assert_eq!(fs::read_to_string(dir.join("state.txt")).unwrap(), "41\n");
        }

        let fail = tmp.0.join("fail");
        agent.send(&format!("{{\"op\":\"checkpoint\",\"dir\":\"{}\"}}\n", fail.display()));
        assert_eq!(
            agent.recv(),
            format!(
                "{{\"ok\":false,\"error\":\"save into {} failed: disk on fire\"}}\n",
                fail.display()
            )
        );
        let boom = tmp.0.join("panic");
        agent.send(&format!("{{\"op\":\"checkpoint\",\"dir\":\"{}\"}}\n", boom.display()));
        assert_eq!(
            agent.recv(),
            format!(
                "{{\"ok\":false,\"error\":\"save into {} panicked: callback exploded\"}}\n",
                boom.display()
            )
        );
        agent.send("{\"op\":\"dance\"}\n");
        assert_eq!(agent.recv(), "{\"ok\":false,\"error\":\"unknown op dance\"}\n");
        agent.send("garbage\n");
        assert_eq!(
            agent.recv(),
            "{\"ok\":false,\"error\":\"malformed line: expected a JSON object at byte 0\"}\n"
        );

        // Still serving after all the errors.
        let three = tmp.0.join("three");
        fs::create_dir(&three).unwrap();
        agent.send(&format!("{{\"op\":\"checkpoint\",\"dir\":\"{}\"}}\n", three.display()));
        assert_eq!(agent.recv(), "{\"ok\":true}\n");

        // Hanging up ends the helper thread.
        drop(agent);
        handle.join().unwrap();
    }

    #[test]
    fn hello_reports_restored() {
        let (_tmp, mut agent, handle) = start(true, |_: &Path| Ok(()));
        assert_eq!(
            agent.recv(),
            format!("{{\"op\":\"hello\",\"pid\":{},\"restored\":true}}\n", std::process::id())
        );
        drop(agent);
        handle.join().unwrap();
    }

    #[test]
    fn missing_socket_ends_quietly() {
        let tmp = TempDir::new();
        let handle = serve_at(tmp.0.join("nobody-listens"), false, |_: &Path| Ok(())).unwrap();
        handle.join().unwrap();
    }
}
