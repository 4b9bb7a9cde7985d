use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

mod cli;

use cli::{run, Cli};
use b24_export::secret::{install_panic_redaction, redact, register_codes_in, register_secret};

/// A stderr writer that redacts registered secrets from every log line.
struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}

/// jemalloc rather than glibc's malloc: see Cargo.toml (the C libraries' own allocations, zstd's, stay with glibc,
/// limited to one arena per core below).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    b24_export::sink::tune_c_malloc();
    install_panic_redaction();
    // register webhook codes before anything can echo them, including the argument parser's own errors
    for arg in std::env::args() {
        register_codes_in(&arg);
    }
    if let Ok(v) = std::env::var("B24_WEBHOOK_URL") {
        register_codes_in(&v);
    }
    for name in ["B24_ACCESS_TOKEN", "B24_REFRESH_TOKEN", "B24_CLIENT_SECRET", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        if let Ok(v) = std::env::var(name) {
            register_secret(v.trim());
        }
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let rendered = if e.use_stderr() { e.render().to_string() } else { e.render().ansi().to_string() };
            if e.use_stderr() {
                eprint!("{}", redact(&rendered));
            } else {
                print!("{}", redact(&rendered));
            }
            return ExitCode::from(code as u8);
        }
    };
    let default = if cli.quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("B24_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = e.exit_kind();
            eprintln!("error: {}", redact(&e.to_string()));
            ExitCode::from(kind as u8)
        }
    }
}
