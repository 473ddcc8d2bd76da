//! A streaming reader of tar archives (as GNU tar writes them), fed in
//! arbitrary chunks: artifacts come out of a container as one tar stream and
//! go to the client file by file without a whole file ever held in memory.

use bytes::{Buf, Bytes, BytesMut};

const BLOCK: usize = 512;

/// What the archive holds, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarEvent {
    /// A member begins; `size` bytes of `Data` follow (for regular files).
    Entry {
        name: String,
        size: u64,
        mode: u32,
        mtime: u64,
        regular: bool,
    },
    Data(Bytes),
    /// The current member's content is complete.
    EntryEnd,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed tar stream: {0}")]
pub struct TarError(String);

enum State {
    Header,
    /// Content of a member: bytes left, then padding to the block.
    Content {
        left: u64,
        pad: usize,
    },
    /// Content nobody needs (of links, directories), then padding.
    Skip {
        left: u64,
        pad: usize,
    },
    /// A GNU long-name member: its content is the next member's name.
    LongName {
        left: u64,
        pad: usize,
        name: Vec<u8>,
    },
    Done,
}

pub struct TarReader {
    buf: BytesMut,
    state: State,
    long_name: Option<String>,
}

impl Default for TarReader {
    fn default() -> Self {
        Self::new()
    }
}

fn octal(field: &[u8]) -> Result<u64, TarError> {
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| TarError(format!("bad octal field {text:?}")))
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

impl TarReader {
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            state: State::Header,
            long_name: None,
        }
    }

    /// Whether the end-of-archive marker was seen.
    pub fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TarEvent>, TarError> {
        self.buf.extend_from_slice(data);
        let mut events = Vec::new();
        loop {
            match &mut self.state {
                State::Done => {
                    self.buf.clear();
                    return Ok(events);
                }
                State::Header => {
                    if self.buf.len() < BLOCK {
                        return Ok(events);
                    }
                    let header = self.buf.split_to(BLOCK);
                    if header.iter().all(|&b| b == 0) {
                        // End of archive (the second zero block is not needed).
                        self.state = State::Done;
                        continue;
                    }
                    let size = octal(&header[124..136])?;
                    let kind = header[156];
                    if kind == b'L' {
                        self.state = State::LongName {
                            left: size,
                            pad: padding(size),
                            name: Vec::new(),
                        };
                        continue;
                    }
                    let mut name = match self.long_name.take() {
                        Some(n) => n,
                        None => {
                            let base = text(&header[0..100]);
                            let prefix = if &header[257..263] == b"ustar\0" {
                                text(&header[345..500])
                            } else {
                                String::new()
                            };
                            if prefix.is_empty() {
                                base
                            } else {
                                format!("{prefix}/{base}")
                            }
                        }
                    };
                    if let Some(stripped) = name.strip_prefix("./") {
                        name = stripped.to_string();
                    }
                    let regular = kind == b'0' || kind == 0;
                    events.push(TarEvent::Entry {
                        name,
                        size: if regular { size } else { 0 },
                        mode: octal(&header[100..108])? as u32,
                        mtime: octal(&header[136..148])?,
                        regular,
                    });
                    if !regular {
                        // Links and directories: no content to pass on, but
                        // any declared size must still be skipped.
                        events.push(TarEvent::EntryEnd);
                        self.state = State::Skip {
                            left: size,
                            pad: padding(size),
                        };
                    } else if size == 0 {
                        events.push(TarEvent::EntryEnd);
                        self.state = State::Skip { left: 0, pad: 0 };
                    } else {
                        self.state = State::Content {
                            left: size,
                            pad: padding(size),
                        };
                    }
                }
                State::Content { left, pad } => {
                    if *left > 0 {
                        if self.buf.is_empty() {
                            return Ok(events);
                        }
                        let take = (*left).min(self.buf.len() as u64) as usize;
                        events.push(TarEvent::Data(self.buf.split_to(take).freeze()));
                        *left -= take as u64;
                        if *left == 0 {
                            events.push(TarEvent::EntryEnd);
                        }
                        continue;
                    }
                    if self.buf.len() < *pad {
                        return Ok(events);
                    }
                    self.buf.advance(*pad);
                    self.state = State::Header;
                }
                State::Skip { left, pad } => {
                    let total = *left as usize + *pad;
                    if self.buf.len() < total {
                        let have = self.buf.len();
                        self.buf.clear();
                        // Consume what there is, content first.
                        let from_left = (have as u64).min(*left);
                        *left -= from_left;
                        *pad -= have - from_left as usize;
                        return Ok(events);
                    }
                    self.buf.advance(total);
                    self.state = State::Header;
                }
                State::LongName { left, pad, name } => {
                    if *left > 0 {
                        if self.buf.is_empty() {
                            return Ok(events);
                        }
                        let take = (*left).min(self.buf.len() as u64) as usize;
                        name.extend_from_slice(&self.buf[..take]);
                        self.buf.advance(take);
                        *left -= take as u64;
                        continue;
                    }
                    if self.buf.len() < *pad {
                        return Ok(events);
                    }
                    self.buf.advance(*pad);
                    let taken = std::mem::take(name);
                    self.long_name = Some(text(&taken)).filter(|n| !n.is_empty());
                    self.state = State::Header;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let long = format!("./plots/{}.png", "x".repeat(150));
        for (name, content) in [
            ("./a.txt", &b"alpha"[..]),
            ("./empty", &b""[..]),
            (long.as_str(), &[7u8; 1500][..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            builder.append_data(&mut h, name, content).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn read_all(bytes: &[u8], chunk: usize) -> Vec<(String, Vec<u8>)> {
        let mut reader = TarReader::new();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for piece in bytes.chunks(chunk) {
            for event in reader.push(piece).unwrap() {
                match event {
                    TarEvent::Entry { name, .. } => files.push((name, Vec::new())),
                    TarEvent::Data(d) => files.last_mut().unwrap().1.extend_from_slice(&d),
                    TarEvent::EntryEnd => {}
                }
            }
        }
        assert!(reader.done());
        files
    }

    #[test]
    fn reads_members_whatever_the_chunking() {
        let bytes = archive();
        for chunk in [1, 7, 512, 513, 4096, bytes.len()] {
            let files = read_all(&bytes, chunk);
            assert_eq!(files.len(), 3, "chunk {chunk}");
            assert_eq!(files[0], ("a.txt".to_string(), b"alpha".to_vec()));
            assert_eq!(files[1], ("empty".to_string(), Vec::new()));
            assert!(
                files[2].0.starts_with("plots/xxx") && files[2].0.ends_with(".png"),
                "{}",
                files[2].0
            );
            assert_eq!(files[2].1, vec![7u8; 1500]);
        }
    }
}
