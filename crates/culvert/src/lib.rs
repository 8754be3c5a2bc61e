//! The `culvert` program: configuration, the daemon that wires the core to the system,
//! the status and key tools, and the namespace demo. `main.rs` only calls [`main`].

mod aead;
mod cli;
mod config;
mod daemon;
mod demo;
mod identity;
mod metrics;
mod status;

pub mod testbed;

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, InitRole, LogFormat};
use config::Settings;

/// Exit status for a bad configuration or flag.
const EXIT_CONFIG: u8 = 2;

/// Runs the command line; returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => daemon_command(Settings::server(&args)),
        Command::Client(args) => daemon_command(Settings::client(&args)),
        Command::Status(args) => status::command(&args),
        Command::Genkey => {
            println!("{}", identity::generate().to_base64().as_str());
            Ok(())
        }
        Command::Pubkey => pubkey(),
        Command::Init(args) => init(
            args.role,
            args.output.as_deref(),
            args.server_key.as_deref(),
        ),
        Command::ForgetServer(args) => forget_server(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Proxy(args) => culvert_proxy::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("culvert: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn daemon_command(settings: Result<Settings, config::ConfigError>) -> anyhow::Result<()> {
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("culvert: error: {e}");
            std::process::exit(EXIT_CONFIG.into());
        }
    };
    init_logging(settings.log_format);
    daemon::run(settings)
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CULVERT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn pubkey() -> anyhow::Result<()> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    println!("{}", identity::public_of(&text)?);
    Ok(())
}

/// `culvert forget-server`: drops the pinned server key(s) of a client instance.
fn forget_server(args: &cli::ForgetArgs) -> anyhow::Result<()> {
    let netns = culvert_sys::netns::current_name();
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| identity::default_state_dir(&netns, &args.tun_name));
    let n = identity::forget_server(&dir, args.server.as_deref())?;
    let file = dir.join(identity::KNOWN_SERVERS);
    if n == 0 {
        eprintln!("no pinned server key in {}", file.display());
    } else {
        eprintln!(
            "forgot {n} pinned server key(s) in {}; the next start trusts the server that answers \
             then — check its key in the log against `culvert pubkey < server.key`",
            file.display()
        );
    }
    Ok(())
}

/// `culvert init`: the example with a freshly generated passphrase, printed or written 0600.
/// With `server_key` (a client in key mode) the server's key is written and the passphrase
/// left out.
fn init(
    role: InitRole,
    output: Option<&std::path::Path>,
    server_key: Option<&str>,
) -> anyhow::Result<()> {
    use base64::Engine;
    let example = match role {
        InitRole::Server => config::EXAMPLE_SERVER,
        InitRole::Client => config::EXAMPLE_CLIENT,
    };
    let passphrase = base64::engine::general_purpose::STANDARD.encode(identity::os_random::<24>());
    let mut text = example.replace(config::PLACEHOLDER, &passphrase);
    if let Some(key) = server_key {
        let key: culvert_core::PublicKey = key
            .parse()
            .map_err(|e| anyhow::anyhow!("--server-key: {e}"))?;
        if !matches!(role, InitRole::Client) {
            anyhow::bail!("--server-key is for `culvert init client`");
        }
        text = text
            .replace(
                "# server_public_key = \"base64 public key of the server\"",
                &format!("server_public_key = \"{key}\""),
            )
            .replace(
                &format!("passphrase = \"{passphrase}\""),
                "# passphrase = \"(key mode: none needed)\"",
            )
            .replace(
                "address = [\"10.0.0.2/24\"]",
                "# address = [\"10.0.0.2/24\"]",
            );
    }
    match output {
        None => print!("{text}"),
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
            f.write_all(text.as_bytes())?;
            eprintln!(
                "wrote {} with a new random passphrase; copy the same passphrase to every node",
                path.display()
            );
        }
    }
    Ok(())
}
