//! Sample cooperative program: a counter whose value survives migration.
//!
//! Counts up every 100 ms, printing `count N`. `save` writes the value to `state.txt` in the
//! checkpoint directory; on a migration target it is read back and `restored count=N` printed.
//! Run `coop/test.sh` to see it migrate with a stand-in agent.

use std::fs;
use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const STATE_FILE: &str = "state.txt";

fn load(dir: &Path) -> io::Result<u64> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path)?;
    text.trim().parse().map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}: {text:?}", path.display()))
    })
}

/// Write to a temporary name and rename, so `state.txt` is never seen half-written.
fn save(dir: &Path, count: u64) -> io::Result<()> {
    let tmp = dir.join("state.txt.tmp");
    fs::write(&tmp, format!("{count}\n"))?;
    fs::rename(&tmp, dir.join(STATE_FILE))
}

fn main() -> ExitCode {
    let count = match ferry_coop::restore_dir() {
        Some(dir) => match load(&dir) {
            Ok(count) => {
                println!("restored count={count}");
                count
            }
            // Starting from 0 would silently lose the migrated state: refuse instead.
            Err(e) => {
                eprintln!("counter: cannot restore from {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        },
        None => 0,
    };
    let state = Arc::new(Mutex::new(count));

    // Only after the state is loaded: serve() says hello, which tells the agent we are ready.
    let shared = Arc::clone(&state);
    let served = ferry_coop::serve(move |dir| {
        // Hold the lock while writing so the saved count is exactly the last one printed.
        let count = shared.lock().unwrap_or_else(|e| e.into_inner());
        save(dir, *count)
    });
    if let Err(e) = served {
        eprintln!("counter: cannot start the ferry-coop helper: {e}");
    }

    loop {
        thread::sleep(Duration::from_millis(100));
        let mut count = state.lock().unwrap_or_else(|e| e.into_inner());
        *count += 1;
        // Printed under the lock, so a checkpoint never falls between increment and print.
        println!("count {count}");
    }
}
