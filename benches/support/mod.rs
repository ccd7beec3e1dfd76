//! What the benches share: the release binary run in a child process, its peak RSS sampled.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A finished child process: its output, wall time and peak RSS.
pub struct Measured {
    pub output: Output,
    pub secs: f64,
    pub peak_rss_kb: u64,
}

/// Runs `cmd` with stdout captured, sampling VmHWM (the peak resident set) from
/// `/proc/<pid>/status` every 20 ms until it exits.
pub fn run_sampling_rss(cmd: &mut Command) -> Measured {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_rss_kb = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(hwm) = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| vm_hwm_kb(&s))
        {
            peak_rss_kb = peak_rss_kb.max(hwm);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let output = child.wait_with_output().unwrap();
    Measured {
        output,
        secs,
        peak_rss_kb,
    }
}

fn vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
