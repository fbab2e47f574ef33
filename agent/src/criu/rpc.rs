//! Requests to CRIU over `criu swrk`, answering its NOTIFY messages along the way.

use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

use ferry_proto::criu as rpc;
use prost::Message;

use crate::sys::reaper::Reaper;
use crate::sys::swrk::Swrk;

/// How long criu may take to exit once it answered.
const EXIT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot run criu swrk: {0}")]
    Spawn(std::io::Error),
    #[error("criu RPC transport: {0}")]
    Io(std::io::Error),
    #[error("criu closed the connection without answering (it may have crashed or been killed)")]
    Closed,
    #[error("criu sent a message that does not decode: {0}")]
    Decode(prost::DecodeError),
}

/// A request sent to a running `criu swrk`, not yet answered.
pub struct Pending {
    swrk: Swrk,
}

impl Pending {
    /// The criu process serving the request (killing it abandons the request).
    pub fn pid(&self) -> i32 {
        self.swrk.pid
    }

    /// Waits for the final answer; NOTIFY messages are acknowledged after `on_notify(script)`.
    pub fn wait(self, mut on_notify: impl FnMut(&str)) -> Result<rpc::CriuResp, RpcError> {
        let swrk = self.swrk;
        let result = (|| loop {
            let buf = swrk.recv().map_err(RpcError::Io)?;
            if buf.is_empty() {
                return Err(RpcError::Closed);
            }
            let resp = rpc::CriuResp::decode(buf.as_slice()).map_err(RpcError::Decode)?;
            if resp.r#type == rpc::CriuReqType::Notify as i32 {
                let script =
                    resp.notify.as_ref().and_then(|n| n.script.clone()).unwrap_or_default();
                on_notify(&script);
                let ack = rpc::CriuReq {
                    r#type: rpc::CriuReqType::Notify as i32,
                    notify_success: Some(true),
                    ..Default::default()
                };
                swrk.send(&ack.encode_to_vec()).map_err(RpcError::Io)?;
                continue;
            }
            return Ok(resp);
        })();
        let pid = swrk.pid;
        if swrk.finish(EXIT_WAIT).is_none() {
            tracing::warn!(pid, "criu swrk did not exit within {EXIT_WAIT:?}");
        }
        result
    }
}

/// Starts a fresh `criu swrk` and sends it `req`. `keep` are fds the criu child inherits, `env`
/// variables it gets.
pub fn start(
    criu: &Path,
    reaper: &Reaper,
    keep: &[RawFd],
    env: &[(&str, &Path)],
    mnt_ns: Option<&std::os::fd::OwnedFd>,
    req: rpc::CriuReq,
) -> Result<Pending, RpcError> {
    let swrk = Swrk::start(criu, reaper, keep, env, mnt_ns).map_err(RpcError::Spawn)?;
    swrk.send(&req.encode_to_vec()).map_err(RpcError::Io)?;
    Ok(Pending { swrk })
}

/// Sends `req` to a fresh `criu swrk` and returns its final answer.
pub fn call(
    criu: &Path,
    reaper: &Reaper,
    keep: &[RawFd],
    mnt_ns: Option<&std::os::fd::OwnedFd>,
    req: rpc::CriuReq,
    on_notify: impl FnMut(&str),
) -> Result<rpc::CriuResp, RpcError> {
    start(criu, reaper, keep, &[], mnt_ns, req)?.wait(on_notify)
}
