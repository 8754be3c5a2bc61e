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
use config::{Settings, lightweight};

/// Exit status for a bad configuration or flag.
const EXIT_CONFIG: u8 = 2;

/// Runs the command line; returns the process exit status.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| lightweight::is_its_command_line(a))
    {
        return lightweight_tunnel(&args[1..]);
    }
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Server(args) => daemon_command(Settings::server(&args)),
        Command::Client(args) => daemon_command(Settings::client(&args)),
        Command::Status(args) => status::command(&args),
        Command::Genkey(args) => genkey(args.out.as_deref()),
        Command::Pubkey => pubkey(),
        Command::Init(args) => init(&args),
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

/// A command line in lightweight-tunnel's form (`culvert -m server -l … -k …`).
fn lightweight_tunnel(args: &[std::ffi::OsString]) -> ExitCode {
    let invocation = match lightweight::parse(args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("culvert: error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match invocation {
        lightweight::Invocation::Version => {
            println!("culvert {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        lightweight::Invocation::Usage => {
            print!("{}", lightweight::USAGE);
            Ok(())
        }
        lightweight::Invocation::Generate(path) => {
            lightweight::generate(&path).map(|said| eprintln!("{said}"))
        }
        lightweight::Invocation::Run {
            server,
            raw,
            native,
        } => {
            let role = if server { "server" } else { "client" };
            let argv = ["culvert".into(), role.into()].into_iter().chain(native);
            match Cli::try_parse_from(argv)
                .unwrap_or_else(|e| e.exit())
                .command
            {
                Command::Server(a) => daemon_command(Settings::server_over(*raw, &a)),
                Command::Client(a) => daemon_command(Settings::client_over(*raw, &a)),
                _ => unreachable!("the role is a daemon's"),
            }
        }
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
    let json = settings.log_format == LogFormat::Json;
    daemon::run(settings).or_else(|e| {
        if !json {
            return Err(e);
        }
        // A log collector reading JSON lines gets the fatal error as one too.
        tracing::error!(fatal = true, "{e:#}");
        std::process::exit(1)
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CULVERT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: never into a file or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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

/// `culvert genkey`: a new private key, printed, or written to a new 0600 file.
fn genkey(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let secret = identity::generate();
    match out {
        None => println!("{}", secret.to_base64().as_str()),
        Some(path) => {
            identity::store(path, &secret)?;
            eprintln!(
                "wrote a private key to {} (mode 0600); its public key: {}",
                path.display(),
                secret.public_key()
            );
        }
    }
    Ok(())
}

/// `culvert init`: the example, printed or written 0600. Its passphrase is the one in
/// `--passphrase-file` (made there when the file does not exist yet), else a new random
/// one. With `--server-key` (a client in key mode) the server's key is written and no
/// passphrase.
fn init(args: &cli::InitArgs) -> anyhow::Result<()> {
    let example = match args.role {
        InitRole::Server => config::EXAMPLE_SERVER,
        InitRole::Client => config::EXAMPLE_CLIENT,
    };
    let (passphrase, origin) = match &args.passphrase_file {
        _ if args.server_key.is_some() => (String::new(), None),
        Some(file) => identity::shared_passphrase(file)?,
        None => (identity::new_passphrase(), None),
    };
    let mut text = example.replace(config::PLACEHOLDER, &passphrase);
    if let Some(key) = &args.server_key {
        let key: culvert_core::PublicKey = key
            .parse()
            .map_err(|e| anyhow::anyhow!("--server-key: {e}"))?;
        if !matches!(args.role, InitRole::Client) {
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
    if let Some(server) = &args.server {
        if !matches!(args.role, InitRole::Client) {
            anyhow::bail!("--server is for `culvert init client`");
        }
        text = text.replace(
            "server = \"vpn.example.com:9000\"",
            &format!("server = \"{server}\""),
        );
    }
    if let Some(address) = &args.address {
        let prefix: culvert_wire::addr::Prefix = address
            .parse()
            .map_err(|_| anyhow::anyhow!("--address {address:?}: expected ADDRESS/PREFIX"))?;
        let example = match args.role {
            InitRole::Server => "address = [\"10.0.0.1/24\"]",
            InitRole::Client => "address = [\"10.0.0.2/24\"]",
        };
        text = text.replace(example, &format!("address = [\"{prefix}\"]"));
    }
    let Some(path) = &args.output else {
        print!("{text}");
        return Ok(());
    };
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
        f.write_all(text.as_bytes())?;
    }
    let what = match (&args.server_key, &args.passphrase_file, origin) {
        (Some(_), _, _) => "for key mode (the server's key, no passphrase)".to_owned(),
        (None, Some(file), Some(identity::PassphraseSource::Read)) => {
            format!("with the passphrase of {}", file.display())
        }
        (None, Some(file), _) => format!(
            "with a new passphrase, also written to {f}: give each client the same with \
             `culvert init client -o client.toml --passphrase-file {f}` (copy {f} over first)",
            f = file.display()
        ),
        (None, None, _) => "with a new random passphrase: every node needs the same one \
                            (--passphrase-file FILE writes it where the others can take it)"
            .to_owned(),
    };
    eprintln!("wrote {} {what}", path.display());
    Ok(())
}
