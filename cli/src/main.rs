//! The one user-facing binary: `ferry agent`, `ferry coordinator`, `ferry up`, the CLI verbs over
//! the REST API (verbs.rs), `ferry certs` and the benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_agent::config::CommitCrash;
use ferry_agent::AgentConfig;

#[derive(Parser)]
#[command(name = "ferry", version, about = "Move running Linux processes between machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    api: ferry::verbs::Api,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: spawn, supervise, pause, stop, migrate and checkpoint workloads over
    /// gRPC.
    Agent(AgentArgs),
    /// Start a whole local cluster: coordinator, REST gateway and N agents (with root, each on its
    /// own network-namespace host). Ctrl-C tears it all down.
    Up(ferry::up::UpArgs),
    /// Run the coordinator: the control plane agents register and heartbeat with (nodes,
    /// workloads, migrations, drains, failover), with the REST API and dashboard with --http.
    Coordinator(CoordinatorArgs),
    #[command(flatten)]
    Verb(ferry::verbs::Verb),
    /// Create the cluster's CA (if missing) and certificates for its parts, for mutual TLS.
    Certs(CertsArgs),
    /// Benchmarks that write a report.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The agent's fd store (started by the agent itself): holds workloads' output pipes across
    /// agent restarts.
    #[command(hide = true)]
    FdStore { socket: PathBuf },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Migrate a mixed-content process with ferry and with the hand pipeline (criu dump, tar |
    /// zstd -1 | nc, criu restore) between two network-namespace hosts; report both.
    Migrate(ferry::bench::BenchArgs),
    /// Load the REST gateway with N workload records at a constant rate; report latency
    /// percentiles and throughput.
    Api(ferry::bench_api::ApiBenchArgs),
    /// Migrate Redis with its own address back and forth between two network-namespace hosts
    /// while N clients on a third keep a TCP connection each; report each client's stall next to
    /// the downtime, resets and reconnects.
    Network(ferry::bench_network::NetworkBenchArgs),
    /// Protect a memhog process on one of three network-namespace hosts with a coordinator:
    /// report each periodic checkpoint's freeze and bytes, then the time from powering its host
    /// off to it running on another.
    Checkpoint(ferry::bench_checkpoint::CheckpointBenchArgs),
}

#[derive(clap::Args)]
struct CoordinatorArgs {
    /// Address of the gRPC server.
    #[arg(long, env = "FERRY_COORDINATOR_LISTEN", default_value = "127.0.0.1:50050")]
    listen: SocketAddr,
    /// Where the coordinator keeps its database (ferry.db).
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "/var/lib/ferry/coordinator")]
    data_dir: PathBuf,
    /// Milliseconds between an agent's heartbeats; three missed make a node offline.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Also serve the REST gateway on this address (all-in-one mode), e.g. 127.0.0.1:5000.
    #[arg(long, env = "FERRY_HTTP")]
    http: Option<SocketAddr>,
    /// The REST API's bearer tokens: a file of ROLE:TOKEN lines (ROLE operator or read-only).
    /// FERRY_TOKENS may carry the same entries inline instead.
    #[arg(long, env = "FERRY_TOKENS_FILE")]
    tokens: Option<PathBuf>,
    /// The built dashboard to serve at / (default: web/dist of this checkout, if built).
    #[arg(long, env = "FERRY_WEB_DIR")]
    web_dir: Option<PathBuf>,
    #[command(flatten)]
    wire: WireArgs,
    /// Plain TCP for gRPC and, without tokens, an open REST API (both logged as warnings).
    /// Without it, gRPC needs --tls-dir and --http needs tokens.
    #[arg(long)]
    insecure: bool,
    /// Seconds an ended workload (exited, failed, lost) stays listed (`ferry ps -a`) after it
    /// ended; then the coordinator forgets it.
    #[arg(long, env = "FERRY_KEEP_ENDED_SECS", default_value_t = 86_400)]
    keep_ended_secs: u64,
    /// Finished migrations kept beyond --keep-migrations-secs: the newest this many. A finished
    /// migration is forgotten once it is both older than that age and not among these (one
    /// that has not ended never is).
    #[arg(long, env = "FERRY_KEEP_MIGRATIONS", default_value_t = 10_000)]
    keep_migrations: u64,
    /// Seconds every finished migration is kept, however many there are (default 30 days).
    #[arg(long, env = "FERRY_KEEP_MIGRATIONS_SECS", default_value_t = 30 * 86_400)]
    keep_migrations_secs: u64,
    /// Events (GET /api/logs, `ferry events`) kept beyond --keep-events-secs: the newest this
    /// many.
    #[arg(long, env = "FERRY_KEEP_EVENTS", default_value_t = 100_000)]
    keep_events: u64,
    /// Seconds every event is kept, however many there are (default 30 days).
    #[arg(long, env = "FERRY_KEEP_EVENTS_SECS", default_value_t = 30 * 86_400)]
    keep_events_secs: u64,
    /// Forget the nodes of an earlier run (and what they ran) at start; live agents register
    /// again. For a new cluster on an old data dir, as `ferry up` starts one.
    #[arg(long)]
    forget_nodes: bool,
    /// The cluster's workload address range, an IPv4 CIDR such as 10.231.7.128/25 (at most
    /// /30): a workload started with network "own" gets the lowest free host address of it,
    /// which moves with it on migration. It must be on-link for every node.
    #[arg(long, env = "FERRY_WORKLOAD_CIDR")]
    workload_cidr: Option<String>,
    /// The network of a process started without one (POST /api/processes without "network",
    /// `ferry run` without --network): node (the node's network) or own (an address of its own
    /// from --workload-cidr).
    #[arg(long, default_value = "node", value_parser = ["node", "own"])]
    default_network: String,
    /// Seconds a node may be silent before its protected workloads (started with
    /// checkpointIntervalSeconds, `ferry run --checkpoint-every`) are restored on other nodes
    /// from their latest checkpoints. Agents kill their protected workloads themselves after
    /// half of it without an answered heartbeat (their lease). At least 3 heartbeat intervals +
    /// 2 s; 0 turns failover and leases off.
    #[arg(long, env = "FERRY_FAILOVER_GRACE_SECS", default_value_t = 30)]
    failover_grace_secs: u64,
    /// How many migrations a drain (POST /api/servers/ID/drain, `ferry drain`) runs at a time.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    drain_concurrency: u32,
    /// Test only: ask every migration's source for a fault, KIND:ARG with KIND slow-transfer
    /// (ms per chunk) or hold-before-commit (ms); agents honour it only with
    /// --enable-fault-injection.
    #[arg(long, hide = true)]
    test_migration_fault: Option<String>,
    /// Test only: abort once a migration is recorded, before its source is asked (`accepted`),
    /// or once the source answered, before the outcome is recorded (`answered`).
    #[arg(long, hide = true, value_parser = ["accepted", "answered"])]
    test_crash_at: Option<String>,
}

/// `--test-migration-fault KIND:ARG`.
fn migration_fault(s: &str) -> anyhow::Result<(ferry_proto::agent::Fault, u32)> {
    use ferry_proto::agent::Fault;
    let (kind, arg) = s.split_once(':').unwrap_or((s, "0"));
    let fault = match kind {
        "slow-transfer" => Fault::SlowTransfer,
        "hold-before-commit" => Fault::HoldBeforeCommit,
        "crash-at" => Fault::CrashAt,
        other => anyhow::bail!(
            "--test-migration-fault {other:?}: not slow-transfer, hold-before-commit or crash-at"
        ),
    };
    Ok((
        fault,
        arg.parse().with_context(|| {
            format!("--test-migration-fault {s:?}: ARG is milliseconds (crash-at: the step)")
        })?,
    ))
}

/// Mutual TLS for gRPC: a directory with ca.pem, NAME.pem and NAME-key.pem (`ferry certs`).
#[derive(clap::Args)]
struct WireArgs {
    /// Directory with the cluster's ca.pem and this part's NAME.pem and NAME-key.pem.
    #[arg(long, env = "FERRY_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Which certificate in --tls-dir is this part's (default: the node name, or "coordinator").
    #[arg(long, env = "FERRY_TLS_NAME")]
    tls_name: Option<String>,
}

impl WireArgs {
    fn wire(&self, default_name: &str, insecure: bool) -> anyhow::Result<ferry_proto::tls::Wire> {
        let name = self.tls_name.as_deref().unwrap_or(default_name);
        let wire = ferry_proto::tls::Wire::from_flags(self.tls_dir.as_deref(), name, insecure)
            .map_err(|e| anyhow::anyhow!(e))?;
        if !wire.is_tls() {
            tracing::warn!("--insecure: gRPC is plain TCP, unauthenticated and unencrypted (snapshots included)");
        }
        Ok(wire)
    }
}

#[derive(clap::Args)]
struct CertsArgs {
    /// Where the CA (created if missing) and the certificates are.
    #[arg(long)]
    dir: PathBuf,
    /// The part to issue a certificate for (a node name, or "coordinator"); repeatable.
    #[arg(long = "name", required = true)]
    names: Vec<String>,
    /// Addresses to name in the certificates (informational: clients verify the CA and the
    /// cluster name).
    #[arg(long = "ip")]
    ips: Vec<std::net::IpAddr>,
    /// Validity of the issued certificates, in days.
    #[arg(long, default_value_t = 825)]
    days: i64,
}

/// The REST API's token table from --tokens or FERRY_TOKENS; `None` only with --insecure.
fn gateway_tokens(args: &CoordinatorArgs) -> anyhow::Result<Option<ferry_gateway::auth::Tokens>> {
    let text = match (&args.tokens, std::env::var("FERRY_TOKENS")) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the tokens file {f:?}"))?,
        ),
        (None, Ok(t)) => Some(t),
        (None, Err(_)) => None,
    };
    match text {
        Some(t) => ferry_gateway::auth::Tokens::parse(&t)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("bad REST API tokens: {e}")),
        None if args.insecure => {
            tracing::warn!("--insecure: the REST API is open to anyone who can reach it");
            Ok(None)
        }
        None => anyhow::bail!(
            "the REST API needs tokens: give --tokens FILE (lines ROLE:TOKEN, ROLE operator or read-only) or FERRY_TOKENS, or --insecure to serve it without authentication"
        ),
    }
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Address of the gRPC server.
    #[arg(long, env = "FERRY_AGENT_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where workloads' directories and logs live.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "/var/lib/ferry/agent")]
    data_dir: PathBuf,
    /// Name of this node (default: the hostname).
    #[arg(long, env = "FERRY_NODE")]
    node: Option<String>,
    #[command(flatten)]
    wire: WireArgs,
    /// Plain TCP for gRPC instead of mutual TLS (logged as a warning).
    #[arg(long)]
    insecure: bool,
    /// Coordinator to register with and heartbeat to, e.g. https://10.0.0.1:50050.
    #[arg(long, env = "FERRY_COORDINATOR")]
    coordinator: Option<String>,
    /// This agent's gRPC URL as the coordinator and other agents reach it (default: from --listen
    /// when it names a specific address).
    #[arg(long, env = "FERRY_ADVERTISE")]
    advertise: Option<String>,
    /// Path of the ferry-init executable (default: next to this binary).
    #[arg(long, env = "FERRY_INIT")]
    init_path: Option<PathBuf>,
    /// Path of the criu binary (default: found on PATH or in /usr/local/sbin).
    #[arg(long, env = "FERRY_CRIU")]
    criu: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when stopping a workload.
    #[arg(long, default_value_t = 10)]
    stop_grace_secs: u64,
    /// Largest snapshot accepted from another agent, in MiB (also bounded by free space).
    #[arg(long, default_value_t = 64 * 1024)]
    max_snapshot_mib: u64,
    /// Honour test-only faults in migration requests (corrupt a chunk, slow the transfer).
    #[arg(long, hide = true)]
    enable_fault_injection: bool,
    /// Keep each migration's scratch directory (CRIU images and logs) under the data dir.
    #[arg(long)]
    keep_scratch: bool,
    /// Restore a stop-and-copy migration's memory before the workload resumes, rather than
    /// filling it from the received images right after (which takes the copy out of the downtime)
    #[arg(long)]
    eager_restore: bool,
    /// As a source: seconds to wait for the target's restore once the whole snapshot has left,
    /// then roll back (default: 60 plus 5 per GiB of the snapshot and its memory pages)
    #[arg(long)]
    restore_deadline_secs: Option<u64>,
    /// Seconds an ended workload (its status, log and directory) is kept after it ended
    #[arg(long, default_value_t = 86_400)]
    keep_ended_secs: u64,
    /// Test-only, with --enable-fault-injection: as a target, SIGKILL this agent once a commit
    /// is recorded (`recorded`) or once the copy runs, before answering (`resumed`).
    #[arg(long, hide = true, value_parser = ["recorded", "resumed"])]
    test_crash_at_commit: Option<String>,
    /// The cluster key that seals checkpoints (64 hex digits; `ferry certs` writes cluster.key):
    /// every agent needs the same. Default: cluster.key in --tls-dir, when it is there. Without
    /// one, this node refuses protected workloads.
    #[arg(long, env = "FERRY_CLUSTER_KEY_FILE")]
    cluster_key_file: Option<PathBuf>,
    /// How many other agents keep a copy of each checkpoint of this node's workloads.
    #[arg(long, default_value_t = 2)]
    checkpoint_replicas: usize,
    /// How many checkpoints of each workload every holder keeps (the newest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    checkpoint_keep: u32,
    /// An S3-compatible store that keeps every checkpoint too:
    /// s3://BUCKET/PREFIX?endpoint=http://HOST:PORT&region=R, credentials from AWS_ACCESS_KEY_ID
    /// and AWS_SECRET_ACCESS_KEY (or access_key_id=ID&secret_access_key_file=FILE).
    #[arg(long, env = "FERRY_CHECKPOINT_STORE")]
    checkpoint_store: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Verb(verb) = cli.command {
        return match ferry::verbs::run(cli.api, verb) {
            Ok(code) => ExitCode::from(code),
            Err(err) => {
                eprintln!("ferry: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Coordinator(args) => run_coordinator(args),
        Command::Up(args) => ferry::up::run(args),
        Command::Certs(args) => run_certs(args),
        Command::FdStore { socket } => ferry_agent::sys::fdstore::serve(&socket)
            .with_context(|| format!("fd store on {}", socket.display())),
        Command::Verb(_) => unreachable!("handled above"),
        Command::Bench(BenchCommand::Migrate(args)) => ferry::bench::migrate(args),
        Command::Bench(BenchCommand::Api(args)) => ferry::bench_api::run(args),
        Command::Bench(BenchCommand::Network(args)) => ferry::bench_network::run(args),
        Command::Bench(BenchCommand::Checkpoint(args)) => ferry::bench_checkpoint::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_certs(args: CertsArgs) -> anyhow::Result<()> {
    // The cluster key that seals checkpoints, made once beside the CA.
    let key = args.dir.join("cluster.key");
    if !key.exists() {
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("cannot create {}", args.dir.display()))?;
        ferry_agent::sys::fsmode::write(
            &key,
            format!("{}\n", ferry_agent::checkpoint::object::ClusterKey::generate_hex()).as_bytes(),
        )
        .with_context(|| format!("cannot write {}", key.display()))?;
        println!("{}", key.display());
    }
    for name in &args.names {
        let written = ferry_proto::tls::issue_into(&args.dir, name, &args.ips, args.days)
            .map_err(|e| anyhow::anyhow!(e))?;
        for f in written {
            println!("{}", f.display());
        }
    }
    Ok(())
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let node = args.node.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "node".into())
    });
    let wire = args.wire.wire(&node, args.insecure)?;
    let config = AgentConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        node,
        coordinator: args.coordinator,
        advertise: args.advertise.clone().unwrap_or_default(),
        init_path: args.init_path.unwrap_or_else(AgentConfig::default_init_path),
        stop_grace: Duration::from_secs(args.stop_grace_secs),
        criu_path: args.criu,
        max_snapshot_bytes: args.max_snapshot_mib << 20,
        fault_injection: args.enable_fault_injection,
        keep_scratch: args.keep_scratch,
        eager_restore: args.eager_restore,
        restore_deadline: args.restore_deadline_secs.map(Duration::from_secs),
        keep_ended: Duration::from_secs(args.keep_ended_secs),
        cluster_key_file: args.cluster_key_file.or_else(|| {
            let k = args.wire.tls_dir.as_ref()?.join("cluster.key");
            k.is_file().then_some(k)
        }),
        checkpoint_replicas: args.checkpoint_replicas,
        checkpoint_keep: args.checkpoint_keep,
        checkpoint_store: args.checkpoint_store,
        test_crash_at_commit: match args.test_crash_at_commit.as_deref() {
            None => None,
            Some(_) if !args.enable_fault_injection => {
                anyhow::bail!("--test-crash-at-commit needs --enable-fault-injection")
            }
            Some("recorded") => Some(CommitCrash::Recorded),
            Some(_) => Some(CommitCrash::Resumed),
        },
        wire,
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local = listener.local_addr()?;
        let mut config = config;
        if config.advertise.is_empty() {
            if local.ip().is_unspecified() {
                anyhow::bail!(
                    "--listen {local} names no specific address: give --advertise https://HOST:PORT"
                );
            }
            config.advertise = format!("{}://{local}", config.wire.scheme());
        }
        let agent = ferry_agent::Agent::new(config.clone()).await?;
        if let Some(coordinator) = &config.coordinator {
            ferry_agent::register::spawn(
                agent.clone(),
                coordinator.clone(),
                config.advertise.clone(),
            );
        }
        tracing::info!(listen = %local, "agent serving gRPC");
        ferry_agent::serve(agent, listener, shutdown_signal())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(())
    })
}

fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let wire = args.wire.wire("coordinator", args.insecure)?;
    let workload_range = args
        .workload_cidr
        .as_deref()
        .map(ferry_coordinator::WorkloadRange::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--workload-cidr: {e}"))?;
    let default_network = ferry_coordinator::Network::parse(&args.default_network)
        .context("--default-network is node or own")?;
    if default_network == ferry_coordinator::Network::Own && workload_range.is_none() {
        anyhow::bail!(
            "--default-network own needs the workload address range: give --workload-cidr CIDR \
             (e.g. 10.231.7.128/25)"
        );
    }
    if let Some(r) = workload_range {
        tracing::info!(range = %r, addresses = r.size(), default_network = default_network.as_str(), "workload address range");
    }
    let config = ferry_coordinator::CoordinatorConfig {
        workload_range,
        default_network,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(100)),
        keep_ended: Duration::from_secs(args.keep_ended_secs),
        forget_nodes: args.forget_nodes,
        drain_concurrency: args.drain_concurrency as usize,
        failover_grace: Duration::from_secs(args.failover_grace_secs),
        keep_migrations: retention(args.keep_migrations, args.keep_migrations_secs),
        keep_events: retention(args.keep_events, args.keep_events_secs),
        migration_fault: args.test_migration_fault.as_deref().map(migration_fault).transpose()?,
        test_crash_at: args.test_crash_at.as_deref().map(|a| match a {
            "accepted" => ferry_coordinator::CoordCrash::Accepted,
            _ => ferry_coordinator::CoordCrash::Answered,
        }),
        ..ferry_coordinator::CoordinatorConfig::new(args.data_dir.clone(), wire)
    };
    config.check().map_err(|e| anyhow::anyhow!(e))?;
    if config.failover_grace.is_zero() {
        tracing::warn!("--failover-grace-secs 0: no failover and no leases; protected workloads are checkpointed but never restored by the coordinator");
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let coordinator = ferry_coordinator::Coordinator::open(config)?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(http) = args.http {
            let gateway = ferry_gateway::GatewayConfig {
                web_dir: ferry_gateway::locate_web_dir(args.web_dir.clone()),
                tokens: gateway_tokens(&args)?,
            };
            match &gateway.web_dir {
                Some(d) => tracing::info!(dir = %d.display(), "serving the dashboard"),
                None => {
                    tracing::warn!("no dashboard build found (web/dist); / says how to build it")
                }
            }
            let http_listener = tokio::net::TcpListener::bind(http)
                .await
                .with_context(|| format!("cannot listen on {http} for HTTP"))?;
            tracing::info!(listen = %http_listener.local_addr()?, "gateway serving HTTP");
            let (c, mut rx) = (coordinator.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = ferry_gateway::serve(c, http_listener, gateway, stopped).await {
                    tracing::error!(%e, "gateway failed");
                }
            });
        }
        tracing::info!(listen = %listener.local_addr()?, "coordinator serving gRPC");
        let shutdown = async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        };
        ferry_coordinator::serve(coordinator, listener, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}

/// A history's retention from its flags: `keep` newest, and any younger than `secs`.
fn retention(keep: u64, secs: u64) -> ferry_coordinator::Retention {
    ferry_coordinator::Retention {
        keep,
        max_age_ms: secs.saturating_mul(1000).min(i64::MAX as u64) as i64,
    }
}
