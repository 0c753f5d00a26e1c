//! Progress on the terminal while a job runs.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

use crate::scheduler_api::SchedulerApi;

/// How often the scheduler is asked about the job.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// A bar of `unit`s (images, files) done out of the total, with the rate; invisible when
/// stderr is not a terminal (logs and CI stay clean) or with `--quiet`.
pub fn counting_bar(total: u64, unit: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit}, {{per_sec}}, ETA {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Moves `bar` from the status of the Ballista job named `job_name`, as the scheduler's REST
/// API reports it: images read by the finished tasks of the job's first stage (the one that
/// featurizes and writes), and tasks done and running. Runs until aborted; an unreachable API
/// only leaves the bar where it is.
pub async fn track_cluster_job(api: SchedulerApi, job_name: String, bar: ProgressBar) {
    let mut job_id = None;
    let mut interval = tokio::time::interval(POLL_EVERY);
    loop {
        interval.tick().await;
        bar.tick();
        if job_id.is_none() {
            let jobs: Option<Vec<JobOverview>> = api.get("jobs").await.ok();
            job_id = jobs.and_then(|jobs| jobs.into_iter().find(|j| j.job_name == job_name)).map(|j| j.job_id);
        }
        let Some(id) = &job_id else { continue };
        let Ok(stages) = api.get::<JobStages>(&format!("job/{id}/stages")).await else {
            continue;
        };
        if let Some(progress) = StageProgress::of_first_stage(&stages) {
            bar.set_position(progress.images.min(bar.length().unwrap_or(u64::MAX)));
            bar.set_message(format!("· {} tasks done, {} running", progress.done, progress.running));
        }
    }
}

/// The parts of Ballista's `/api/jobs` entries used here.
#[derive(Debug, Deserialize)]
struct JobOverview {
    job_id: String,
    job_name: String,
}

/// The parts of Ballista's `/api/job/{id}/stages` used here.
#[derive(Debug, Deserialize)]
struct JobStages {
    stages: Vec<Stage>,
}

#[derive(Debug, Deserialize)]
struct Stage {
    stage_id: String,
    #[serde(default)]
    tasks: Vec<Option<Task>>,
}

#[derive(Debug, Deserialize)]
struct Task {
    /// `"Running"`, `"Successful"` or `{"Failed": {...}}`.
    status: serde_json::Value,
    #[serde(default)]
    input_rows: u64,
}

#[derive(Debug, PartialEq)]
struct StageProgress {
    images: u64,
    done: usize,
    running: usize,
}

impl StageProgress {
    /// The stage with the lowest id is the one that scans the images.
    fn of_first_stage(stages: &JobStages) -> Option<Self> {
        let stage = stages.stages.iter().min_by_key(|s| s.stage_id.parse::<u64>().unwrap_or(u64::MAX))?;
        let tasks = || stage.tasks.iter().flatten();
        let done = || tasks().filter(|t| t.status == "Successful");
        Some(Self {
            images: done().map(|t| t.input_rows).sum(),
            done: done().count(),
            running: tasks().filter(|t| t.status == "Running").count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape Ballista 55's scheduler serves (trimmed).
    #[test]
    fn progress_counts_the_finished_tasks_of_the_scan_stage() {
        let body = r#"{"stages": [
            {"stage_id": "2", "stage_status": "Unresolved", "input_rows": 0, "output_rows": 0, "tasks": []},
            {"stage_id": "1", "stage_status": "Running", "input_rows": 300, "output_rows": 2, "tasks": [
                {"id": 0, "status": "Successful", "partition_id": [0], "input_rows": 151, "output_rows": 1},
                {"id": 1, "status": "Successful", "partition_id": [1], "input_rows": 149, "output_rows": 1},
                {"id": 2, "status": "Running", "partition_id": [2], "input_rows": 0, "output_rows": 0},
                {"id": 3, "status": {"Failed": {"reason": "ExecutionError", "error": "x"}}, "partition_id": [3],
                 "input_rows": 0, "output_rows": 0}
            ]}
        ]}"#;
        let stages: JobStages = serde_json::from_str(body).unwrap();
        assert_eq!(StageProgress::of_first_stage(&stages), Some(StageProgress { images: 300, done: 2, running: 1 }));
    }
}
