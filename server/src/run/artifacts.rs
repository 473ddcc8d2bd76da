//! Artifacts: the files a run created or changed under the pool's output
//! directory, streamed back after the run as artifact events.
//!
//! Finding them must not cost every run an extra engine call, so the run
//! itself says whether there is anything: the program (Python's bootstrap,
//! in-process) or a thin shell wrapper around it (other languages, commands)
//! writes a frame at its very end to stderr, marked with a per-run random
//! nonce, holding 1 if any file under the output directory is newer than the
//! run's start and 0 otherwise. The server strips the frame from stderr. Only
//! when the frame says 1, or is missing (the run was killed, or closed its
//! stderr), does one more exec stream the files out as a tar.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{ArtifactChunk, RunEvent};
use crate::{
    artifact::ArtifactInfo,
    error::{Error, Result},
    files::tar_stream::{TarEvent, TarReader},
    pool::{LeaseGuard, lease::RunId},
    sandbox::{Output, sh},
};

/// Artifact events carry at most this much content each.
const CHUNK: usize = 256 * 1024;
/// Kernels that stamp file times from a coarse clock may date a file a tick
/// before the run's start as the server reads it; look back this far.
const CLOCK_SLACK: Duration = Duration::from_millis(5);

/// Marks the end of a run that does not report its artifacts itself. It
/// runs as part of the run, in its environment: programs by absolute path,
/// so that the run's PATH cannot turn the report off by accident (a run
/// that fakes it on purpose only hides its own files: the report is a hint,
/// the listing is the server's own).
const WRAPPER: &str = r#"out=$1 t=$2 n=$3; shift 3
"$@"; rc=$?
c=0; [ -n "$(/usr/bin/find "$out" -type f -newermt "@$t" -print -quit 2>/dev/null)" ] && c=1
printf '\036sandpool:%s:%s:%s\036' "$n" "$c" "$n" >&2
exit $rc"#;

/// Streams the output directory's files newer than the run's start as a tar,
/// by name (figures are numbered, so in the order they were made). One
/// process: tar itself skips the older files (directories still appear, as
/// entries without content; the reader ignores them).
const COLLECT: &str = r#"cd -- "$1" 2>/dev/null || exit 0
exec tar -c -f - --format=gnu --sort=name --newer-mtime="@$2" ."#;

/// One run's watch on its output directory.
pub struct ArtifactWatch {
    nonce: String,
    since: String,
    since_time: SystemTime,
}

impl ArtifactWatch {
    pub fn start() -> Self {
        let since_time = SystemTime::now() - CLOCK_SLACK;
        let secs = since_time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Self {
            nonce: format!("{:032x}", rand::random::<u128>()),
            since: format!("{secs:.6}"),
            since_time,
        }
    }

    /// The run's environment for programs (and plotting hooks) that report
    /// artifacts themselves.
    pub fn env(&self, output_dir: &str) -> Vec<(String, String)> {
        vec![
            ("SANDPOOL_OUTPUT_DIR".into(), output_dir.to_string()),
            (
                "SANDPOOL_PLOT_DIR".into(),
                format!("{}/plots", output_dir.trim_end_matches('/')),
            ),
            ("SANDPOOL_RUN_START".into(), self.since.clone()),
            ("SANDPOOL_ARTIFACT_NONCE".into(), self.nonce.clone()),
        ]
    }

    /// `argv` wrapped in the shell that reports artifacts after it.
    pub fn wrap(&self, argv: Vec<String>, output_dir: &str) -> Vec<String> {
        let mut wrapped = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            WRAPPER.to_string(),
            "sh".to_string(),
            output_dir.to_string(),
            self.since.clone(),
            self.nonce.clone(),
        ];
        wrapped.extend(argv);
        wrapped
    }

    pub fn scanner(&self) -> FrameScanner {
        FrameScanner::new("sandpool", &self.nonce)
    }

    /// The values a context's kernel needs to report a cell's artifacts:
    /// nonce and start time.
    pub fn cell_args(&self) -> (&str, &str) {
        (&self.nonce, &self.since)
    }

    pub fn since(&self) -> SystemTime {
        self.since_time
    }
}

/// Finds and removes a frame `\x1e<tag>:<nonce>:<payload>:<nonce>\x1e` in a
/// stream (a run's stderr), whatever the chunking. The nonce is random per
/// run, so a program cannot produce one by accident.
pub struct FrameScanner {
    start: Vec<u8>,
    end: Vec<u8>,
    held: BytesMut,
    inside: Option<BytesMut>,
    /// The payload of the frame, once seen.
    pub payload: Option<Bytes>,
    /// For artifact frames: Some(true) if there are artifacts.
    pub verdict: Option<bool>,
}

impl FrameScanner {
    pub fn new(tag: &str, nonce: &str) -> Self {
        Self {
            start: format!("\x1e{tag}:{nonce}:").into_bytes(),
            end: format!(":{nonce}\x1e").into_bytes(),
            held: BytesMut::new(),
            inside: None,
            payload: None,
            verdict: None,
        }
    }

    /// Whether the frame has been seen.
    pub fn seen(&self) -> bool {
        self.payload.is_some()
    }

    /// Takes stderr bytes; returns those that are the program's own.
    pub fn feed(&mut self, data: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(data);
        loop {
            if let Some(frame) = self.inside.as_mut() {
                frame.extend_from_slice(&input);
                input.clear();
                if let Some(j) = find(frame, &self.end) {
                    self.verdict = Some(&frame[..j] == b"1");
                    self.payload = Some(Bytes::copy_from_slice(&frame[..j]));
                    input.extend_from_slice(&frame[j + self.end.len()..]);
                    self.inside = None;
                    continue;
                }
                if frame.len() > 64 {
                    // Not a frame of ours after all: give it back.
                    out.extend_from_slice(&self.start);
                    out.extend_from_slice(frame);
                    self.inside = None;
                }
                return out.freeze();
            }
            if let Some(i) = find(&input, &self.start) {
                out.extend_from_slice(&input[..i]);
                self.inside = Some(BytesMut::from(&input[i + self.start.len()..]));
                input.clear();
                continue;
            }
            let keep = partial_prefix(&input, &self.start);
            let cut = input.len() - keep;
            out.extend_from_slice(&input[..cut]);
            self.held = input.split_off(cut);
            return out.freeze();
        }
    }

    /// At the end of the stream: whatever was held back is the program's.
    pub fn finish(&mut self) -> Bytes {
        let mut out = std::mem::take(&mut self.held);
        if let Some(frame) = self.inside.take() {
            let mut back = BytesMut::from(&self.start[..]);
            back.extend_from_slice(&frame);
            back.extend_from_slice(&out);
            out = back;
        }
        out.freeze()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of the longest suffix of `data` that begins `marker`.
fn partial_prefix(data: &[u8], marker: &[u8]) -> usize {
    (1..marker.len().min(data.len() + 1))
        .rev()
        .find(|&n| data[data.len() - n..] == marker[..n])
        .unwrap_or(0)
}

/// Streams the run's artifacts to `tx` (content up to `budget` bytes in all;
/// beyond it, files are announced without content) and returns what was sent.
pub async fn collect(
    lease: &LeaseGuard,
    run_id: &RunId,
    watch: &ArtifactWatch,
    budget: u64,
    tx: &mpsc::Sender<RunEvent>,
) -> Result<Vec<ArtifactInfo>> {
    let out_dir = lease.spec().output_dir.clone();
    let container = lease.sandbox();
    let argv = sh(COLLECT, &[&out_dir, &watch.since]);
    let mut exec = container
        .start(container.internal(argv))
        .await
        .map_err(|e| lease.engine_error(e))?;
    let mut reader = TarReader::new();
    let mut sent = Vec::new();
    let mut current: Option<Pending> = None;
    let mut left = budget;
    while let Some(item) = exec.output.next().await {
        let data = match item.map_err(Error::from)? {
            Output::Stdout(d) => d,
            Output::Stderr(e) => {
                tracing::debug!(stderr = %String::from_utf8_lossy(&e), "artifact collection");
                continue;
            }
        };
        let events = reader.push(&data).map_err(|e| Error::FileFailed {
            path: out_dir.clone(),
            message: e.to_string(),
        })?;
        for event in events {
            match event {
                TarEvent::Entry {
                    name,
                    size,
                    mtime,
                    regular,
                    ..
                } => {
                    if !regular {
                        continue;
                    }
                    let omitted = size > left;
                    if !omitted {
                        left -= size;
                    }
                    let modified = UNIX_EPOCH + Duration::from_secs(mtime);
                    let info =
                        ArtifactInfo::new(&out_dir, name, size, modified, run_id.to_string());
                    current = Some(Pending {
                        info,
                        omitted,
                        hasher: Sha256::new(),
                        buffer: BytesMut::new(),
                        offset: 0,
                    });
                }
                TarEvent::Data(data) => {
                    if let Some(p) = current.as_mut() {
                        p.hasher.update(&data);
                        if !p.omitted {
                            p.buffer.extend_from_slice(&data);
                            while p.buffer.len() >= CHUNK {
                                let chunk = p.buffer.split_to(CHUNK).freeze();
                                p.send(chunk, false, tx).await;
                            }
                        }
                    }
                }
                TarEvent::EntryEnd => {
                    if let Some(mut p) = current.take() {
                        p.info.sha256 = hex::encode(p.hasher.clone().finalize());
                        let rest = std::mem::take(&mut p.buffer).freeze();
                        p.send(rest, true, tx).await;
                        sent.push(p.info);
                    }
                }
            }
        }
    }
    let code = container.exit_code(&exec.id).await?;
    if code != 0 {
        tracing::warn!(run = %run_id, code, "artifact collection exited with an error");
    }
    Ok(sent)
}

/// A file being streamed out.
struct Pending {
    info: ArtifactInfo,
    omitted: bool,
    hasher: Sha256,
    buffer: BytesMut,
    offset: u64,
}

impl Pending {
    async fn send(&mut self, data: Bytes, last: bool, tx: &mpsc::Sender<RunEvent>) {
        let len = data.len() as u64;
        let chunk = ArtifactChunk {
            info: self.info.clone(),
            offset: self.offset,
            data,
            last,
            omitted: self.omitted,
        };
        self.offset += len;
        // A client that went away loses the rest; the run is over anyway.
        let _ = tx.send(RunEvent::Artifact(chunk)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]], nonce: &str) -> (Vec<u8>, Option<bool>) {
        let mut s = FrameScanner::new("sandpool", nonce);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.feed(c));
        }
        out.extend_from_slice(&s.finish());
        (out, s.verdict)
    }

    #[test]
    fn the_frame_is_stripped_however_it_is_split() {
        let frame = b"err line\n\x1esandpool:abc:1:abc\x1e";
        for split in 0..frame.len() {
            let (out, verdict) = scan(&[&frame[..split], &frame[split..]], "abc");
            assert_eq!(out, b"err line\n", "split at {split}");
            assert_eq!(verdict, Some(true));
        }
        let (out, verdict) = scan(&[b"x\x1esandpool:abc:0:abc\x1eafter"], "abc");
        assert_eq!((out.as_slice(), verdict), (&b"xafter"[..], Some(false)));
    }

    #[test]
    fn lookalikes_pass_through() {
        let (out, verdict) = scan(&[b"a\x1esandpool:zzz:1:zzz\x1e", b"\x1e"], "abc");
        assert_eq!(out, b"a\x1esandpool:zzz:1:zzz\x1e\x1e");
        assert_eq!(verdict, None);
        let (out, verdict) = scan(&[b"tail \x1esandp"], "abc");
        assert_eq!(
            out, b"tail \x1esandp",
            "a cut-off start is returned at the end"
        );
        assert_eq!(verdict, None);
    }
}
