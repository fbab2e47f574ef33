//! A real S3 server for the object store's tests: a single-node Garage (an S3-compatible store,
//! installed by scripts/setup.sh) on loopback ports, with a bucket and a key that may use it.
//! Everything it writes is under a temp dir removed on drop; the server is killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{wait_until, TempDir};

/// The Garage release scripts/setup.sh installs (its config and CLI are those of 2.x).
pub const VERSION: &str = "2.5.0";

/// A running single-node Garage with bucket [`Garage::bucket`] and a key allowed to read and
/// write it.
pub struct Garage {
    child: Child,
    bin: PathBuf,
    config: PathBuf,
    /// The S3 API's base URL, e.g. `http://127.0.0.1:40123` (path-style requests).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    tmp: TempDir,
}

/// The `garage` binary: on PATH, else where scripts/setup.sh installs it. Its absence fails the
/// test loudly: a test of the S3 backend must not pass without an S3 server.
pub fn garage_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("garage")).collect::<Vec<_>>())
        .unwrap_or_default();
    let bin = on_path
        .into_iter()
        .chain([PathBuf::from("/usr/local/bin/garage")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the `garage` binary (Garage {VERSION}, the S3 server the object store tests run \
                 against) is not installed: run scripts/setup.sh, which builds it with cargo install"
            )
        });
    let out = Command::new(&bin).arg("--version").output().unwrap_or_else(|e| {
        panic!("cannot run {} --version: {e}; run scripts/setup.sh", bin.display())
    });
    // It says e.g. "garage cargo:2.5.0 [features: bundled-libs, lmdb]" (or "v2.5.0" from git).
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.split(|c: char| !(c.is_ascii_digit() || c == '.')).any(|w| w == VERSION),
        "{} is not Garage {VERSION} (it says {:?}): run scripts/setup.sh",
        bin.display(),
        version.trim()
    );
    bin
}

/// A loopback port nothing listens on at the moment (the OS picks it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A port nothing listens on at the moment on address `ip`.
fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("a free port").port()
}

/// 64 hex characters: Garage's RPC secret, different for every instance.
fn rpc_secret() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Garage {
    /// Starts Garage and waits until its S3 API serves bucket `ferry` to key `ferry-test`.
    pub async fn start() -> Garage {
        Garage::start_on("127.0.0.1").await
    }

    /// [`Garage::start`] with the S3 API on address `ip` (e.g. a test bridge's, for agents in
    /// network-namespace hosts); its RPC and admin APIs stay on loopback.
    pub async fn start_on(ip: &str) -> Garage {
        let bin = garage_bin();
        let tmp = TempDir::new("ferry-test-garage");
        let dir = tmp.path().to_path_buf();
        let (rpc, s3, admin) = (free_port(), free_port_on(ip), free_port());
        let config = dir.join("garage.toml");
        // lmdb: the only database engine scripts/setup.sh builds Garage with.
        let toml = format!(
            r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "lmdb"
metadata_fsync = false
data_fsync = false
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "{ip}:{s3}"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            dir = dir.display(),
            secret = rpc_secret(),
        );
        std::fs::write(&config, toml).expect("write garage.toml");
        let log = std::fs::File::create(dir.join("garage.log")).expect("create garage.log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .env_remove("GARAGE_RPC_HOST")
            .env_remove("GARAGE_RPC_SECRET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup garage.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut g = Garage {
            child,
            bin,
            config,
            endpoint: format!("http://{ip}:{s3}"),
            region: "garage".into(),
            bucket: "ferry".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            tmp,
        };
        let started = Instant::now();

        // Up once the CLI gets an answer over RPC.
        wait_until("garage to answer `garage status`", Duration::from_secs(30), || {
            let ok = g.alive() && g.try_cli(&["status"]).is_ok();
            async move { ok.then_some(()) }
        })
        .await;
        let node = g.cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap_or("").to_string();
        assert_eq!(node.len(), 64, "unexpected `garage node id -q` output {node:?}");
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);

        // JSON rather than the human output: the key's id and secret are fields, not lines.
        let key = g.cli(&["json-api", "CreateKey", r#"{"name":"ferry-test"}"#]);
        let key: serde_json::Value = serde_json::from_str(&key)
            .unwrap_or_else(|e| panic!("`garage json-api CreateKey` printed no JSON ({e}): {key}"));
        g.access_key_id = key["accessKeyId"].as_str().expect("accessKeyId").to_string();
        g.secret_access_key = key["secretAccessKey"].as_str().expect("secretAccessKey").to_string();

        // The new layout takes a moment to be in force; until then bucket creation fails.
        wait_until("garage to create bucket ferry", Duration::from_secs(30), || {
            let ok = g.try_cli(&["bucket", "create", "ferry"]).is_ok()
                || g.try_cli(&["bucket", "info", "ferry"]).is_ok();
            async move { ok.then_some(()) }
        })
        .await;
        g.cli(&["bucket", "allow", "--read", "--write", "--owner", "ferry", "--key", "ferry-test"]);

        // And the S3 port accepts connections.
        wait_until("garage's S3 API to listen", Duration::from_secs(10), || {
            let ok = std::net::TcpStream::connect((ip, s3)).is_ok();
            async move { ok.then_some(()) }
        })
        .await;
        eprintln!("[garage] serving S3 at {} after {:?}", g.endpoint, started.elapsed());
        g
    }

    /// The instance's directory (config, data, log).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Garage's own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("garage.log")).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                panic!("garage exited ({status}) while starting; its log:\n{}", self.log())
            }
            Err(e) => panic!("cannot wait for garage: {e}"),
        }
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, Output> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("GARAGE_RPC_HOST")
            .env_remove("GARAGE_RPC_SECRET")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(out)
        }
    }

    /// Runs `garage -c CONFIG ARGS...` and returns its stdout; panics with its output if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|out| {
            panic!(
                "`garage {}` failed ({}):\n{}{}\ngarage's log:\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            )
        })
    }

    /// Kills the server and waits for it: the endpoint then refuses connections.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
