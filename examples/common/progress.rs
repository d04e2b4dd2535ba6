//! Progress bars (indicatif). They draw on stderr and only when it is a terminal, so piped or
//! redirected output holds just the printed results.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `steps` training steps; set its message to the running loss.
pub fn steps_bar(steps: usize, prefix: String) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos:>4}/{len} {msg} ({elapsed} < {eta})")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}
