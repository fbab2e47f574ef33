//! `ferry up`: a whole local cluster in one command — the coordinator with its REST gateway and
//! N agents. With root each agent is its own host: a network namespace on a bridge and a mount
//! namespace with a private data directory (see `hosts.rs`), so migrations cross a real network
//! boundary. Without root the agents share the loopback (ports 50051 and up; cooperative engine).
//! `ferry up` supervises its parts (`supervise.rs`): one that dies is started again, and a
//! restarted agent takes its running workloads back. Ctrl-C, SIGTERM or SIGHUP tears everything
//! down: workloads (a dead agent's too), agents, coordinator, namespaces, bridge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::hosts::Net;
use crate::supervise::Supervisor;

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Number of agents (nodes).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Address of the REST gateway.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub http: SocketAddr,
    /// Where the cluster keeps its state (coordinator database, each node's data).
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "/var/lib/ferry/up")]
    pub data_dir: PathBuf,
    /// With root: names the hosts' network (bridge `<NAME>br0`, namespaces `<NAME>-node<i>`), so
    /// two clusters can run side by side.
    #[arg(long, default_value = "ferry")]
    pub net_name: String,
    /// With root: the hosts' /24 subnet as its first three octets (the bridge is .1).
    #[arg(long, default_value = "10.231.254")]
    pub subnet: String,
}

/// The operator token of a `ferry up` with the default data dir, which the CLI falls back to.
pub const DEFAULT_OPERATOR_TOKEN: &str = "/var/lib/ferry/up/operator.token";

/// Fresh REST API tokens for this cluster: `tokens` (the coordinator's table) and
/// `operator.token` / `read-only.token` (for the CLI and people), all mode 0600.
fn write_tokens(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let operator = ferry_gateway::auth::generate()?;
    let read_only = ferry_gateway::auth::generate()?;
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        ferry_proto::tls::write_fresh(&path, text, 0o600)
            .with_context(|| format!("cannot write {path:?}"))?;
        Ok(path)
    };
    let table = write("tokens", &format!("operator:{operator}\nread-only:{read_only}\n"))?;
    write("operator.token", &format!("{operator}\n"))?;
    write("read-only.token", &format!("{read_only}\n"))?;
    Ok((table, operator))
}

/// Where each root-mode agent sees its own data directory (a private bind mount).
const NODE_MOUNT: &str = "/run/ferry-node";

struct Cluster {
    parts: Supervisor,
    /// Each node's data directory as this process sees it.
    node_dirs: Vec<PathBuf>,
    net: Option<Net>,
    pid_file: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents' workloads first (they outlive their agent by design: those of a running agent
        // are its descendants, those of any agent are in its records), then the agents and the
        // coordinator, then the hosts.
        let dirs = self.node_dirs.clone();
        self.parts.teardown(|| {
            dirs.iter().flat_map(|d| ferry_agent::workload::recorded_live_pids(d)).collect()
        });
        self.net.take();
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// An earlier `ferry up` still running with this data dir, if any.
fn running(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let alive = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| c.contains("ferry") && c.contains("up"))
        .unwrap_or(false);
    alive.then_some(pid)
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 50 {
        bail!("--nodes must be between 1 and 50");
    }
    if args.net_name.is_empty()
        || args.net_name.len() > 8
        || !args.net_name.chars().all(|c| c.is_ascii_alphanumeric())
    {
        bail!("--net-name must be 1 to 8 letters or digits (it names a bridge and namespaces)");
    }
    let octets: Vec<&str> = args.subnet.split('.').collect();
    if octets.len() != 3 || octets.iter().any(|o| o.parse::<u8>().is_err()) {
        bail!("--subnet must be three octets such as 10.231.254, not {:?}", args.subnet);
    }
    let bridge = format!("{}br0", args.net_name);
    // Root's alone (0700): tokens, keys, the database and every node's workloads are below it.
    // Root-mode agents see their node's directory through a bind mount, so their workloads
    // never pass through this one.
    ferry_proto::tls::private_dir(&args.data_dir)
        .with_context(|| format!("cannot create {:?} mode 0700", args.data_dir))?;
    let pid_file = args.data_dir.join("up.pid");
    if let Some(pid) = running(&pid_file) {
        bail!(
            "ferry up is already running with data dir {} (pid {pid}); stop it with Ctrl-C there or `kill {pid}`",
            args.data_dir.display()
        );
    }
    // Before any child: signals are taken synchronously from here on, and orphans come here.
    let supervisor = Supervisor::new()?;
    std::fs::write(&pid_file, std::process::id().to_string())?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let exe = std::env::current_exe()?;
    let logs = args.data_dir.join("logs");
    ferry_proto::tls::private_dir(&logs).with_context(|| format!("cannot create {logs:?}"))?;
    let mut cluster = Cluster { parts: supervisor, node_dirs: Vec::new(), net: None, pid_file };

    let names: Vec<String> = (0..args.nodes).map(|i| format!("node{i}")).collect();
    let coordinator_ip = if root {
        let hosts: Vec<String> = names.iter().map(|n| format!("{}-{n}", args.net_name)).collect();
        cluster.net = Some(Net::create(&bridge, &args.subnet, &hosts)?);
        format!("{}.1", args.subnet)
    } else {
        "127.0.0.1".to_string()
    };
    let coordinator_url = format!("https://{coordinator_ip}:50050");
    let (tokens, operator_token) = write_tokens(&args.data_dir)?;
    // Mutual TLS between the parts: a fresh CA and a certificate per part, every start.
    let tls = args.data_dir.join("tls");
    let _ = std::fs::remove_dir_all(&tls);
    let ip = |s: &str| s.parse::<std::net::IpAddr>().context("an address of the cluster");
    ferry_proto::tls::issue_into(&tls, "coordinator", &[ip(&coordinator_ip)?], 30)
        .map_err(|e| anyhow::anyhow!(e))?;
    // ...and the cluster key that seals checkpoints, which every agent finds in --tls-dir.
    ferry_agent::sys::fsmode::write(
        &tls.join("cluster.key"),
        ferry_agent::checkpoint::object::ClusterKey::generate_hex().as_bytes(),
    )
    .context("cannot write the cluster key")?;
    for (i, name) in names.iter().enumerate() {
        let node_ip = match &cluster.net {
            Some(net) => net.ip(i),
            None => "127.0.0.1".to_string(),
        };
        ferry_proto::tls::issue_into(&tls, name, &[ip(&node_ip)?], 30)
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    // With root, workloads' own addresses come from the upper half of the hosts' /24: on-link
    // for every host (at .2 and up, 50 at most) and for the root namespace (the bridge's .1).
    // And a workload gets one unless it asks for the node's network: in this cluster every
    // host and this machine share the bridge, so the address reaches the workload from
    // anywhere the user is, and it is what keeps its clients' connections across migrations
    // (docs/network.md). Without root there are no hosts: the node's network.
    let workload_cidr = cluster.net.is_some().then(|| format!("{}.128/25", args.subnet));
    let default_network = if workload_cidr.is_some() { "own" } else { "node" };
    let coordinator = {
        let (exe, http, tls) = (exe.clone(), args.http.to_string(), tls.clone());
        let listen = format!("{coordinator_ip}:50050");
        let data = args.data_dir.join("coordinator");
        move |restart: bool| {
            let mut cmd = Command::new(&exe);
            cmd.args(["coordinator", "--listen", &listen])
                .args(["--http", &http])
                .args(workload_cidr.iter().flat_map(|c| ["--workload-cidr", c.as_str()]))
                .args(["--default-network", default_network])
                .arg("--tokens")
                .arg(&tokens)
                .arg("--tls-dir")
                .arg(&tls)
                .arg("--data-dir")
                .arg(&data);
            if !restart {
                // The earlier run's nodes (and workloads) died with it: no ghosts. A restart
                // keeps what this run's coordinator knew: those nodes and workloads are alive.
                cmd.arg("--forget-nodes");
            }
            cmd
        }
    };
    cluster.parts.start("coordinator", logs.join("coordinator.log"), Box::new(coordinator))?;

    for (i, name) in names.iter().enumerate() {
        let data = args.data_dir.join("nodes").join(name);
        std::fs::create_dir_all(&data)?;
        cluster.node_dirs.push(data.clone());
        let mut agent_args: Vec<String> =
            ["agent", "--node", name, "--coordinator", &coordinator_url]
                .iter()
                .map(|s| s.to_string())
                .collect();
        agent_args.extend(["--tls-dir".into(), tls.to_string_lossy().into_owned()]);
        let exe = exe.clone();
        // The same command at every start: a restarted agent re-adopts the workloads its data
        // directory records.
        let make: crate::supervise::MakeCommand = match &cluster.net {
            Some(net) => {
                std::fs::create_dir_all(NODE_MOUNT)?;
                agent_args.extend([
                    "--listen".into(),
                    format!("{}:50051", net.ip(i)),
                    "--data-dir".into(),
                    NODE_MOUNT.into(),
                ]);
                let netns = net.netns(i);
                Box::new(move |_| {
                    crate::hosts::command_in(
                        &netns,
                        &data,
                        Path::new(NODE_MOUNT),
                        &exe,
                        &agent_args,
                    )
                })
            }
            None => {
                agent_args.extend(["--listen".into(), format!("127.0.0.1:{}", 50051 + i)]);
                agent_args.push("--data-dir".into());
                agent_args.push(data.to_string_lossy().into_owned());
                Box::new(move |_| {
                    let mut c = Command::new(&exe);
                    c.args(&agent_args);
                    c
                })
            }
        };
        cluster.parts.start(name, logs.join(format!("{name}.log")), make)?;
    }

    // Ready when every node is online in the gateway. A part that exits before is a failed
    // start (a wrong flag, a port in use), not something a restart mends.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(&(i, _, status)) = cluster.parts.reap().first() {
            use std::os::unix::process::ExitStatusExt;
            let name = &cluster.parts.parts()[i].name;
            bail!(
                "{name} exited ({}) during start-up; see {}",
                std::process::ExitStatus::from_raw(status),
                logs.join(format!("{name}.log")).display()
            );
        }
        if online_nodes(args.http, &operator_token) >= args.nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("the nodes did not come online within 30 s; see the logs in {}", logs.display());
        }
        if let Some(sig) = cluster.parts.wait_signal(Duration::from_millis(100)) {
            println!("stopping the cluster ({})", crate::supervise::signal_name(sig));
            return Ok(());
        }
    }
    let url = format!("http://{}", args.http);
    println!(
        "ferry is up: {} nodes ({}), coordinator {coordinator_url}",
        args.nodes,
        if root {
            format!("network-namespace hosts on bridge {bridge}")
        } else {
            "loopback".into()
        }
    );
    println!("dashboard and REST API: {url}   (logs in {})", logs.display());
    println!(
        "operator token: {operator_token}   (read-only: {})",
        args.data_dir.join("read-only.token").display()
    );
    println!("try:");
    println!("  export FERRY_TOKEN={operator_token}");
    println!("  ferry run --node node0 --name counter -- sh -c 'i=0; while :; do i=$((i+1)); echo $i; sleep 1; done'");
    println!("  ferry migrate <id from above> --to node1");
    println!("A part that dies is started again (see stderr). Ctrl-C stops the cluster and everything it runs.");

    let sig = cluster.parts.supervise();
    println!("stopping the cluster ({})", crate::supervise::signal_name(sig));
    drop(cluster);
    Ok(())
}

/// Nodes the gateway lists as online (0 while it does not answer).
fn online_nodes(http: SocketAddr, token: &str) -> usize {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&http, Duration::from_millis(200)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let req = format!(
        "GET /api/servers HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.matches("\"status\":\"online\"").count()
}
