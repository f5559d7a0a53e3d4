//! Progress bars on stderr, and everything else that writes to stderr while one may be drawn.
//!
//! Bars are drawn only when stderr is a terminal; otherwise [`Progress`] is hidden and costs
//! nothing. Bars hang off one [`MultiProgress`], and log lines ([`LogWriter`]) and warnings
//! ([`warn`]) are written with the bars suspended, so that neither tears the other.
use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static BARS: LazyLock<MultiProgress> = LazyLock::new(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));

/// Fits in 80 columns.
const BYTES_TEMPLATE: &str =
    "{msg:>6} [{bar:24.cyan/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {eta:>3}";

/// A byte-counting progress bar, cleared from the screen when dropped.
pub struct Progress {
    bar: ProgressBar,
    /// Highest position reported, for callbacks that report from several threads.
    high: AtomicU64,
}

impl Progress {
    /// A bar over `total` bytes labelled `msg`; hidden unless stderr is a terminal.
    pub fn bytes(total: u64, msg: &'static str) -> Self {
        let bar = if io::stderr().is_terminal() {
            let style = ProgressStyle::with_template(BYTES_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            BARS.add(ProgressBar::new(total).with_style(style).with_message(msg))
        } else {
            ProgressBar::hidden()
        };
        Progress { bar, high: AtomicU64::new(0) }
    }

    /// Advances by `delta` bytes.
    pub fn inc(&self, delta: u64) {
        self.bar.inc(delta);
    }

    /// Reports `done` of `total` bytes; positions lower than one already shown are ignored, so
    /// threads may report out of order.
    pub fn report(&self, done: u64, total: u64) {
        if self.bar.length() != Some(total) {
            self.bar.set_length(total);
        }
        let prev = self.high.fetch_max(done, Ordering::Relaxed);
        if done > prev {
            self.bar.set_position(done);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Prints `zap: warning: <msg>` on stderr.
pub fn warn(msg: impl Display) {
    BARS.suspend(|| {
        let _ = writeln!(io::stderr().lock(), "zap: warning: {msg}");
    });
}

/// A `tracing` writer to stderr that suspends progress bars around each write.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        BARS.suspend(|| io::stderr().lock().write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Shows `line` as the current status on a terminal: the last status moves up into the
/// scrollback and `line` stays under it (a migration's rounds).
pub fn status(line: &str) {
    static BAR: LazyLock<ProgressBar> = LazyLock::new(|| {
        let style = ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = BARS.add(ProgressBar::new_spinner().with_style(style));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    if let Some(prev) = Some(BAR.message()).filter(|m| !m.is_empty()) {
        BAR.println(prev);
    }
    BAR.set_message(line.to_string());
}
