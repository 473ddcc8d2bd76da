//! When a program's run is over: after the program exited, its output
//! pumps are waited for until they end, or until every pipe still open has
//! stayed quiet a while (something the program left behind holds it).
//! Shared by the runner binary (`bin.rs`) and the server's unit tests.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

unsafe extern "C" {
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
}

/// poll(2)'s `struct pollfd`.
#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

const POLLIN: i16 = 0x1;
const POLLHUP: i16 = 0x10;

/// Whether a pipe (a duplicate of the one a pump reads) has something for
/// its pump: bytes to read, or its end (no writer left). Either way the
/// pump is about to move, however long the machine takes to run it.
fn pending(pipe: &OwnedFd) -> bool {
    let mut fd = PollFd {
        fd: pipe.as_raw_fd(),
        events: POLLIN,
        revents: 0,
    };
    // Safety: one valid pollfd, a zero timeout.
    let ready = unsafe { poll(&mut fd, 1, 0) };
    ready > 0 && fd.revents & (POLLIN | POLLHUP) != 0
}

/// Where a pump is: waiting for the pipe, or past it (sending, or done).
pub const READING: u8 = 0;
pub const BUSY: u8 = 1;
pub const ENDED: u8 = 2;

/// How long the pipes of a program that exited must have stayed empty,
/// while something it left behind holds them open, before its exit is
/// sent anyway.
const QUIET_AFTER_EXIT: Duration = Duration::from_millis(50);

/// After the program exited: until its output ended, or until every pipe
/// still open has been waited on, empty, for `QUIET_AFTER_EXIT`. A process
/// the program left in the background may hold its pipes for ever; an
/// engine exec ends at the program's exit all the same, with what the
/// program wrote. A pump that is sending (the server is slow to read), or
/// whose pipe has bytes or its end waiting (the machine is slow to run the
/// pump), is waited for: nothing the program wrote is dropped.
pub fn drain(pumps: &[(Arc<AtomicU8>, Option<OwnedFd>)], ended: &mpsc::Receiver<()>) {
    let mut quiet_since: Option<Instant> = None;
    loop {
        let live: Vec<&(Arc<AtomicU8>, Option<OwnedFd>)> = pumps
            .iter()
            .filter(|(state, _)| state.load(Ordering::SeqCst) != ENDED)
            .collect();
        if live.is_empty() {
            return;
        }
        let quiet = live.iter().all(|(state, pipe)| {
            state.load(Ordering::SeqCst) == READING && !pipe.as_ref().is_some_and(pending)
        });
        if quiet {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= QUIET_AFTER_EXIT {
                return;
            }
        } else {
            quiet_since = None;
        }
        // Woken at once when a pump ends (the usual case: the program's
        // exit closed its pipes), else a look every 5 ms.
        let _ = ended.recv_timeout(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::fd::AsFd, sync::atomic::AtomicBool, thread};

    use super::*;

    /// `drain` of one pump in `state` on `pipe`, in a thread: whether it
    /// returned, and the pump's state to move.
    fn draining(pipe: &std::io::PipeReader, state: u8) -> (Arc<AtomicBool>, Arc<AtomicU8>) {
        let state = Arc::new(AtomicU8::new(state));
        let watch = pipe.as_fd().try_clone_to_owned().ok();
        let done = Arc::new(AtomicBool::new(false));
        let (pumps, finished) = (vec![(Arc::clone(&state), watch)], Arc::clone(&done));
        thread::spawn(move || {
            let (_ended_tx, ended) = mpsc::channel();
            drain(&pumps, &ended);
            finished.store(true, Ordering::SeqCst);
        });
        (done, state)
    }

    #[test]
    fn output_waiting_for_a_pump_the_machine_did_not_run_yet_is_waited_for() {
        // The program wrote and exited; its pump is still blocked in a
        // read that has not returned (a loaded machine did not run it).
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        writer.write_all(b"test\n").expect("write");
        drop(writer);
        let (done, state) = draining(&reader, READING);
        thread::sleep(QUIET_AFTER_EXIT * 6);
        assert!(
            !done.load(Ordering::SeqCst),
            "the run ended before its output was read"
        );
        // The pump runs: reads it all, and its end.
        state.store(ENDED, Ordering::SeqCst);
        thread::sleep(QUIET_AFTER_EXIT * 4);
        assert!(done.load(Ordering::SeqCst));
    }

    #[test]
    fn a_pump_that_is_sending_is_waited_for() {
        // The server reads slowly: the pump is in the middle of a send.
        let (reader, writer) = std::io::pipe().expect("pipe");
        let (done, state) = draining(&reader, BUSY);
        thread::sleep(QUIET_AFTER_EXIT * 6);
        assert!(!done.load(Ordering::SeqCst), "the run ended during a send");
        state.store(ENDED, Ordering::SeqCst);
        thread::sleep(QUIET_AFTER_EXIT * 4);
        assert!(done.load(Ordering::SeqCst));
        drop(writer);
    }

    #[test]
    fn a_pipe_held_open_and_empty_ends_the_wait() {
        // Something the program left behind keeps the pipe open, silent.
        let (reader, writer) = std::io::pipe().expect("pipe");
        let (done, _state) = draining(&reader, READING);
        thread::sleep(QUIET_AFTER_EXIT * 6);
        assert!(
            done.load(Ordering::SeqCst),
            "a silent background writer held the run"
        );
        drop(writer);
    }
}
