//! The runner's wire format, shared by the server and the runner binary
//! (which includes this file by path: it has no dependencies). Every frame
//! is a kind byte, a big-endian u32 length and that many bytes.
//!
//! Server to runner: optionally one `PREPARE` (a `Request`: a program to
//! start now, ahead of the run), then `RUN` (a `Request`), then `STDIN`
//! pieces and one `STDIN_END`. Runner to server: `HELLO` once, then per run
//! `STDOUT` and `STDERR` pieces as they are produced and one `EXIT` (a
//! big-endian i32: the exit code, 128 + N for a program killed by signal N,
//! as a shell and the engines report it).
//!
//! A prepared program waits on its descriptor 3. When the `RUN` comes, the
//! runner writes the run's `Request` there, its environment made whole
//! (the runner's own with the run's entries on top), and closes it; the
//! prepared program becomes the run's program (it applies the working
//! directory, the environment and the input itself, or execs the run's argv
//! when it cannot stand in for it). Its output and exit are the run's.

pub const HELLO: u8 = b'H';
// The runner host's frames (`--host`), around a runner's stream: server to
// host `SPAWN` (a `Spawn`) and `RELAY` (bytes for the current runner's
// standard input); host to server `HELLO` once (`HOST_VERSION`, a space,
// its pid), then per `SPAWN` one `SPAWNED` (the runner's pid) or
// `SPAWN_FAILED` (why), after which `RELAY` frames carry that runner's
// stream and one `RUNNER_ENDED` its end. Nothing of an earlier runner
// follows a `SPAWNED`.
pub const SPAWN: u8 = b'N';
pub const SPAWNED: u8 = b'A';
pub const SPAWN_FAILED: u8 = b'F';
pub const RELAY: u8 = b'D';
pub const RUNNER_ENDED: u8 = b'E';
pub const PREPARE: u8 = b'P';
pub const RUN: u8 = b'R';
pub const STDIN: u8 = b'I';
pub const STDIN_END: u8 = b'C';
pub const STDOUT: u8 = b'1';
pub const STDERR: u8 = b'2';
pub const EXIT: u8 = b'X';

/// What `HELLO` carries: a server only talks to the runner it shipped.
pub const VERSION: &[u8] = b"sandpool-runner 2";
/// What the runner host's `HELLO` carries before its pid.
pub const HOST_VERSION: &[u8] = b"sandpool-runner-host 1";
/// Largest output piece the runner sends; the server takes no larger frame
/// from it.
pub const MAX_OUTPUT_FRAME: usize = 64 * 1024;
/// Largest frame the runner takes from the server (a run's argv and env).
pub const MAX_REQUEST_FRAME: usize = 64 << 20;
/// Bytes before a frame's payload.
pub const HEADER: usize = 5;

/// A frame's header.
pub fn header(kind: u8, len: usize) -> [u8; HEADER] {
    let n = (len as u32).to_be_bytes();
    [kind, n[0], n[1], n[2], n[3]]
}

/// The payload length a header announces.
pub fn payload_len(header: &[u8; HEADER]) -> usize {
    u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize
}

/// One run: where, what, with what environment on top of the runner's own
/// (which is what the engine gives any exec in the container), and whether
/// standard input follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub working_dir: Vec<u8>,
    pub stdin: bool,
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
}

impl Request {
    /// Length-prefixed fields: working dir, stdin flag, argc, argv, env.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        field(&self.working_dir);
        field(if self.stdin { b"1" } else { b"0" });
        field(self.argv.len().to_string().as_bytes());
        for arg in &self.argv {
            field(arg);
        }
        for kv in &self.env {
            field(kv);
        }
        out
    }

    pub fn decode(mut data: &[u8]) -> Option<Request> {
        let mut fields = Vec::new();
        while !data.is_empty() {
            let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
            fields.push(data.get(4..4 + len)?.to_vec());
            data = &data[4 + len..];
        }
        let mut fields = fields.into_iter();
        let working_dir = fields.next()?;
        let stdin = fields.next()? == b"1";
        let argc: usize = std::str::from_utf8(&fields.next()?).ok()?.parse().ok()?;
        let argv: Vec<Vec<u8>> = fields.by_ref().take(argc).collect();
        if argv.len() != argc || argc == 0 {
            return None;
        }
        Some(Request {
            working_dir,
            stdin,
            argv,
            env: fields.collect(),
        })
    }
}

/// A runner for the host to start: as `uid`, `gid` and the supplementary
/// `groups`, in a session of its own, `request`'s program with exactly its
/// environment, in its working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub request: Request,
}

impl Spawn {
    /// uid, gid, the groups and the request, each a big-endian u32 or a
    /// length-prefixed field.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.uid.to_be_bytes());
        out.extend_from_slice(&self.gid.to_be_bytes());
        out.extend_from_slice(&(self.groups.len() as u32).to_be_bytes());
        for g in &self.groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        out.extend_from_slice(&self.request.encode());
        out
    }

    pub fn decode(data: &[u8]) -> Option<Spawn> {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
        };
        let (uid, gid, n) = (word(0)?, word(4)?, word(8)? as usize);
        if n > 64 {
            return None;
        }
        let groups = (0..n)
            .map(|i| word(12 + 4 * i))
            .collect::<Option<Vec<u32>>>()?;
        let request = Request::decode(data.get(12 + 4 * n..)?)?;
        Some(Spawn {
            uid,
            gid,
            groups,
            request,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_broken_ones_are_refused() {
        let request = Request {
            working_dir: b"/sandbox".to_vec(),
            stdin: true,
            argv: vec![b"/bin/sh".to_vec(), b"-c".to_vec(), b"echo \xff".to_vec()],
            env: vec![b"A=1".to_vec(), b"B=x=y".to_vec()],
        };
        let encoded = request.encode();
        assert_eq!(Request::decode(&encoded), Some(request.clone()));
        // Cut anywhere inside the last field: refused, never a panic.
        assert_eq!(Request::decode(&encoded[..encoded.len() - 1]), None);
        assert_eq!(Request::decode(&encoded[..3]), None);
        // No program.
        let empty = Request {
            argv: Vec::new(),
            ..request
        };
        assert_eq!(Request::decode(&empty.encode()), None);
        assert_eq!(payload_len(&header(STDOUT, 70_000)), 70_000);
    }

    #[test]
    fn spawns_round_trip_and_broken_ones_are_refused() {
        let spawn = Spawn {
            uid: 1000,
            gid: 40_123,
            groups: vec![5, 7],
            request: Request {
                working_dir: b"/".to_vec(),
                stdin: true,
                argv: vec![b"/opt/sandpool/bin/sandpool-runner".to_vec()],
                env: vec![b"HOME=/home/sandbox".to_vec()],
            },
        };
        let encoded = spawn.encode();
        assert_eq!(Spawn::decode(&encoded), Some(spawn.clone()));
        assert_eq!(Spawn::decode(&encoded[..10]), None);
        assert_eq!(Spawn::decode(&encoded[..encoded.len() - 1]), None);
        let mut many = encoded.clone();
        many[8..12].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(
            Spawn::decode(&many),
            None,
            "more groups than the host takes"
        );
    }
}
