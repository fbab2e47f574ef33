//! Signals to processes.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use nix::sys::signal::Signal as Sig;

/// Sends `sig` to `pid`. A process that has already gone is not an error.
pub fn send(pid: i32, sig: Signal) -> std::io::Result<()> {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(std::io::Error::from(e)),
    }
}
