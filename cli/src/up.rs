//! `ferry up`: a whole local cluster in one command — the coordinator with its REST gateway and
//! N agents. With root each agent is its own host: a network namespace on a bridge and a mount
//! namespace with a private data directory (see `hosts.rs`), so migrations cross a real network
//! boundary. Without root the agents share the loopback (ports 50051 and up; cooperative engine).
//! Ctrl-C or SIGTERM tears everything down: workloads, agents, namespaces, bridge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::hosts::Net;

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
    children: Vec<(String, Child)>,
    net: Option<Net>,
    pid_file: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents' workloads first (they outlive their agent by design), then the agents and the
        // coordinator, then the hosts.
        for (_, c) in self.children.iter_mut().rev() {
            let pid = c.id() as i32;
            for d in crate::bench::descendants(pid) {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(d, libc::SIGKILL) };
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, c) in self.children.iter_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.net.take();
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<(String, Child)> {
    let out = std::fs::File::create(log).with_context(|| format!("cannot create {log:?}"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok((name.to_string(), child))
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
    std::fs::write(&pid_file, std::process::id().to_string())?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let exe = std::env::current_exe()?;
    let logs = args.data_dir.join("logs");
    ferry_proto::tls::private_dir(&logs).with_context(|| format!("cannot create {logs:?}"))?;
    let mut cluster = Cluster { children: Vec::new(), net: None, pid_file: pid_file.clone() };

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
    for (i, name) in names.iter().enumerate() {
        let node_ip = match &cluster.net {
            Some(net) => net.ip(i),
            None => "127.0.0.1".to_string(),
        };
        ferry_proto::tls::issue_into(&tls, name, &[ip(&node_ip)?], 30)
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let mut cmd = Command::new(&exe);
    cmd.args(["coordinator", "--listen", &format!("{coordinator_ip}:50050")])
        .args(["--http", &args.http.to_string()])
        .arg("--tokens")
        .arg(&tokens)
        .arg("--tls-dir")
        .arg(&tls)
        .arg("--data-dir")
        .arg(args.data_dir.join("coordinator"))
        // The earlier run's nodes (and workloads) died with it: no ghosts.
        .arg("--forget-nodes");
    cluster.children.push(spawn("coordinator", cmd, &logs.join("coordinator.log"))?);

    for (i, name) in names.iter().enumerate() {
        let data = args.data_dir.join("nodes").join(name);
        std::fs::create_dir_all(&data)?;
        let mut agent_args: Vec<String> =
            ["agent", "--node", name, "--coordinator", &coordinator_url]
                .iter()
                .map(|s| s.to_string())
                .collect();
        agent_args.extend(["--tls-dir".into(), tls.to_string_lossy().into_owned()]);
        let cmd = match &cluster.net {
            Some(net) => {
                std::fs::create_dir_all(NODE_MOUNT)?;
                agent_args.extend([
                    "--listen".into(),
                    format!("{}:50051", net.ip(i)),
                    "--data-dir".into(),
                    NODE_MOUNT.into(),
                ]);
                net.command_on(i, &data, Path::new(NODE_MOUNT), &exe, &agent_args)
            }
            None => {
                agent_args.extend(["--listen".into(), format!("127.0.0.1:{}", 50051 + i)]);
                agent_args.push("--data-dir".into());
                agent_args.push(data.to_string_lossy().into_owned());
                let mut c = Command::new(&exe);
                c.args(&agent_args);
                c
            }
        };
        cluster.children.push(spawn(name, cmd, &logs.join(format!("{name}.log")))?);
    }

    // Ready when every node is online in the gateway.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((name, status)) =
            cluster.children.iter_mut().find_map(|(n, c)| Some((n.clone(), c.try_wait().ok()??)))
        {
            bail!(
                "{name} exited ({status}) during start-up; see {}",
                logs.join(format!("{name}.log")).display()
            );
        }
        if online_nodes(args.http, &operator_token) >= args.nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("the nodes did not come online within 30 s; see the logs in {}", logs.display());
        }
        std::thread::sleep(Duration::from_millis(100));
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
    println!("Ctrl-C stops the cluster and everything it runs.");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let why = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, anyhow::Error>(None),
                _ = int.recv() => return Ok(None),
                _ = tick.tick() => {
                    if let Some(name) = cluster.children.iter_mut().find_map(|(n, c)| c.try_wait().ok()?.map(|_| n.clone())) {
                        return Ok(Some(name));
                    }
                }
            }
        }
    })?;
    println!("stopping the cluster");
    drop(cluster);
    if let Some(name) = why {
        bail!("{name} exited unexpectedly; see {}", logs.join(format!("{name}.log")).display());
    }
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
