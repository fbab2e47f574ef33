//! Conversions between wire types and the agent's domain types.

use std::path::PathBuf;

use ferry_proto::agent as pb;

use crate::health::Health;
use crate::logs::{LogLine, Stream};
use crate::migrate::{MigrationReport, Phase};
use crate::workload::{Engine, State, Status, WorkloadSpec};

pub fn spec_from_pb(s: pb::WorkloadSpec) -> WorkloadSpec {
    WorkloadSpec {
        id: s.id,
        name: s.name,
        argv: s.argv,
        env: s.env.into_iter().collect(),
        cwd: (!s.cwd.is_empty()).then(|| PathBuf::from(s.cwd)),
        engine: match pb::Engine::try_from(s.engine).unwrap_or(pb::Engine::Unspecified) {
            pb::Engine::Criu => Engine::Criu,
            pb::Engine::Cooperative => Engine::Cooperative,
            pb::Engine::Unspecified => Engine::Auto,
        },
        labels: s.labels.into_iter().collect(),
        user: (!s.user.is_empty()).then_some(s.user),
        group: (!s.group.is_empty()).then_some(s.group),
        address: (!s.address.is_empty()).then_some(s.address),
        checkpoint_interval: (s.checkpoint_interval_secs > 0)
            .then(|| std::time::Duration::from_secs(s.checkpoint_interval_secs.into())),
    }
}

pub fn spec_to_pb(s: &WorkloadSpec) -> pb::WorkloadSpec {
    pb::WorkloadSpec {
        id: s.id.clone(),
        name: s.name.clone(),
        argv: s.argv.clone(),
        env: s.env.clone().into_iter().collect(),
        cwd: s.cwd.as_ref().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default(),
        engine: match s.engine {
            Engine::Auto => pb::Engine::Unspecified,
            Engine::Criu => pb::Engine::Criu,
            Engine::Cooperative => pb::Engine::Cooperative,
        } as i32,
        labels: s.labels.clone().into_iter().collect(),
        user: s.user.clone().unwrap_or_default(),
        group: s.group.clone().unwrap_or_default(),
        address: s.address.clone().unwrap_or_default(),
        checkpoint_interval_secs: s
            .checkpoint_interval
            .map(|d| d.as_secs().min(u32::MAX.into()) as u32)
            .unwrap_or_default(),
    }
}

/// What any restore of `w` needs from the node it ran on: its output pipes' keys, its main
/// process's pid in its namespace, and when it started (a snapshot's RestoreInfo, the rest
/// default).
pub fn restore_info_of(w: &crate::workload::Workload) -> pb::RestoreInfo {
    pb::RestoreInfo {
        stdout_key: w.stdio_keys[0].clone(),
        stderr_key: w.stdio_keys[1].clone(),
        main_ns_pid: w.main_ns_pid,
        own_pid_namespace: w.own_pid_namespace,
        started_at_ms: w.started_at_ms,
        ..Default::default()
    }
}

pub fn status_to_pb(s: Status) -> pb::ProcessStatus {
    pb::ProcessStatus {
        spec: Some(spec_to_pb(&s.spec)),
        state: match s.state {
            State::Running => pb::ProcessState::Running,
            State::Sleeping => pb::ProcessState::Sleeping,
            State::Stopped => pb::ProcessState::Stopped,
            State::Exited => pb::ProcessState::Exited,
        } as i32,
        pid: s.pid,
        main_pid: s.main_pid,
        own_pid_namespace: s.own_pid_namespace,
        cpu_percent: s.cpu_percent,
        rss_bytes: s.rss_bytes,
        threads: s.threads,
        task_count: s.task_count,
        tasks: s
            .tasks
            .into_iter()
            .map(|t| pb::TaskInfo {
                pid: t.info.pid,
                ppid: t.info.ppid,
                ns_pid: t.ns_pid,
                comm: t.info.comm,
                state: t.info.state.to_string(),
                threads: t.info.threads,
                rss_bytes: t.info.rss_bytes,
                cpu_ticks: t.info.cpu_ticks,
                init: t.init,
            })
            .collect(),
        exit: s.exit.map(|e| pb::ExitInfo {
            code: e.code,
            signal: e.signal,
            exited_at_ms: e.at_ms,
        }),
        started_at_ms: s.started_at_ms,
        node: s.node,
        lost_reason: s.lost.unwrap_or_default(),
        held_for_migration: s.held_for.unwrap_or_default(),
    }
}

pub fn log_line_to_pb(number: u64, l: LogLine) -> pb::LogLine {
    pb::LogLine {
        line: number,
        at_ms: l.at_ms,
        stream: match l.stream {
            Stream::Stdout => pb::LogStream::Stdout,
            Stream::Stderr => pb::LogStream::Stderr,
        } as i32,
        text: l.text,
    }
}

pub fn health_to_pb(h: Health) -> pb::HealthCheckResponse {
    pb::HealthCheckResponse {
        node: h.node,
        hostname: h.host.hostname,
        kernel: h.host.kernel,
        cpu_model: h.host.cpu_model,
        cpu_flags: h.host.cpu_flags,
        cores: h.host.cores,
        memory_total_bytes: h.host.memory_total_bytes,
        memory_available_bytes: h.host.memory_available_bytes,
        load_1: h.host.load[0],
        load_5: h.host.load[1],
        load_15: h.host.load[2],
        workload_count: h.workload_count,
        criu: Some(pb::CriuInfo {
            version: h.criu.version,
            path: h.criu.path.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
            check_passed: h.criu.check_passed,
            check_error: h.criu.check_error,
        }),
        data_dir_free_bytes: h.data_dir_free_bytes,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        root: h.root,
        onlink_subnets: h.onlink_subnets,
    }
}

pub fn report_to_pb(r: MigrationReport) -> pb::MigrationResult {
    let d = |p: Phase| r.timeline.duration_ms(p);
    let pages = pages_to_pb(r.post_copy_pages);
    pb::MigrationResult {
        migration_id: r.migration_id.clone(),
        workload_id: r.workload_id.clone(),
        source_node: r.source_node.clone(),
        target_node: r.target_node.clone(),
        outcome: match r.outcome {
            Phase::Completed => pb::Outcome::Completed,
            Phase::RolledBack => pb::Outcome::RolledBack,
            _ => pb::Outcome::Failed,
        } as i32,
        error: r.error.clone().unwrap_or_default(),
        failed_phase: r.failed_phase.map(|p| p.as_str().to_string()).unwrap_or_default(),
        phases: r
            .timeline
            .phases
            .iter()
            .map(|(p, s, e)| pb::PhaseTiming {
                phase: p.as_str().to_string(),
                started_at_ms: *s,
                ended_at_ms: *e,
            })
            .collect(),
        freeze_ms: d(Phase::Freezing),
        dump_ms: d(Phase::Checkpointing),
        transfer_ms: d(Phase::Transferring),
        restore_ms: d(Phase::Restoring),
        downtime_ms: r.downtime_ms,
        total_ms: r.total_ms,
        bytes_raw: r.bytes_raw,
        bytes_wire: r.bytes_wire,
        target_status: r.target_status.clone(),
        criu_log: r.criu_log.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        mode: if r.post_copy { "post_copy" } else { "stop_and_copy" }.to_string(),
        post_copy_ms: d(Phase::PostCopy),
        current_phase: r.outcome.as_str().to_string(),
        post_copy_pages_remaining: pages.post_copy_pages_remaining,
        post_copy_bytes_remaining: pages.post_copy_bytes_remaining,
        post_copy_pages_total: pages.post_copy_pages_total,
        transfer_codec: r.transfer_codec.clone(),
        bytes_zero: r.bytes_zero,
        incoming_state: String::new(),
        engine: match r.engine {
            Engine::Criu => "criu",
            Engine::Cooperative => "cooperative",
            Engine::Auto => "auto",
        }
        .to_string(),
    }
}

/// A MigrationResult carrying only the post-copy page counts (the rest default).
pub fn pages_to_pb(c: Option<crate::engine::lazy::PageCount>) -> pb::MigrationResult {
    let c = c.unwrap_or_default();
    pb::MigrationResult {
        post_copy_pages_remaining: c.remaining(),
        post_copy_bytes_remaining: c.remaining() * crate::sys::uffd::page_size(),
        post_copy_pages_total: c.total,
        ..Default::default()
    }
}

/// A post-copy migration into this node, as its target sees it: the memory still to arrive.
pub fn incoming_post_copy_to_pb(
    lp: &crate::engine::lazy::LazyPages,
    node: &str,
) -> pb::MigrationResult {
    let (outcome, error) = match lp.ended() {
        None => (pb::Outcome::Unspecified, String::new()),
        Some(Ok(())) => (pb::Outcome::Completed, String::new()),
        Some(Err(e)) => (pb::Outcome::Failed, e),
    };
    pb::MigrationResult {
        migration_id: lp.migration_id.clone(),
        workload_id: lp.workload_id.clone(),
        source_node: lp.source_node.clone(),
        target_node: node.to_string(),
        outcome: outcome as i32,
        error,
        current_phase: Phase::PostCopy.as_str().to_string(),
        // Stop-and-copy's memory is all here and is filled in from the received images.
        mode: match lp.pages {
            crate::engine::lazy::PageSource::Tunnel => "post_copy",
            crate::engine::lazy::PageSource::Local => "stop_and_copy",
        }
        .to_string(),
        engine: "criu".to_string(),
        ..pages_to_pb(Some(lp.progress()))
    }
}
