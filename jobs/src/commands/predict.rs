//! `fruits predict`: each photo through the backbone (the featurize model, fed as the model
//! directory's `model.json` says) and the trained head of `head.json`: the same numbers as
//! `fruits-classifier.onnx` and the SQL function `predict`.

use anyhow::{Context, Result, bail};
use datafusion::execution::runtime_env::RuntimeEnv;
use fruits_classifier::Prediction;
use fruits_udfs::{Classifier, Featurizer, Location, ModelConfig, ObjectStores, Parallelism};
use serde::Serialize;

use crate::cli::PredictArgs;

/// Labels printed per image.
const TOP: usize = 3;

/// One image's answer, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Answer<'a> {
    file: &'a str,
    /// The most probable labels, best first.
    top: Vec<Ranked<'a>>,
    unknown: bool,
    unknown_score: f32,
    unknown_threshold: f32,
}

#[derive(Debug, Serialize)]
struct Ranked<'a> {
    label: &'a str,
    probability: f32,
}

/// Prints one line per image (`json`: one JSON object per line; `quiet`: errors only); fails
/// after the last image if any could not be read or decoded.
pub async fn run(args: &PredictArgs, json: bool, quiet: bool) -> Result<()> {
    let runtime = ObjectStores::new(args.s3.options()).runtime_env()?;
    let classifier = Classifier::load(&Location::parse(&args.classifier, &runtime)?).await?;
    let input = classifier.input_spec().with_context(|| {
        format!("{}model.json describes a preprocessing fruits does not implement", classifier.url())
    })?;
    let mut config = ModelConfig::new(&args.backbone);
    config.ort_library = args.ort_library.clone();
    config.input_name = classifier.manifest().input.name.clone();
    config.output_name = args.backbone_output.clone();
    config.input = input;
    config.limits = args.decode.limits();
    let featurizer = Featurizer::load(config, Parallelism::one_session_on_all_cores())?;
    classifier.check_backbone(&featurizer)?;

    let mut failed = 0;
    for file in &args.images {
        match predict_one(&classifier, &featurizer, file, &runtime).await {
            Ok(prediction) => {
                let model = classifier.model();
                let answer = Answer {
                    file,
                    top: model
                        .top_labels(&prediction, TOP)
                        .into_iter()
                        .map(|(label, probability)| Ranked { label, probability })
                        .collect(),
                    unknown: prediction.unknown,
                    unknown_score: prediction.unknown_score,
                    unknown_threshold: model.unknown_threshold,
                };
                if json {
                    println!("{}", serde_json::to_string(&answer)?);
                } else if !quiet {
                    println!("{}", describe(&answer));
                }
            }
            Err(e) => {
                failed += 1;
                if json {
                    println!("{}", serde_json::json!({ "file": file, "error": format!("{e:#}") }));
                } else {
                    eprintln!("{file}: {e:#}");
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images could not be predicted", args.images.len());
    }
    Ok(())
}

/// `file: label p, label p, label p`, or `file: unknown (score S > threshold T), nearest ...`.
fn describe(answer: &Answer) -> String {
    let top: Vec<String> = answer.top.iter().map(|r| format!("{} {:.4}", r.label, r.probability)).collect();
    if answer.unknown {
        format!(
            "{}: unknown (score {:.4} > threshold {:.4}); nearest known: {}",
            answer.file,
            answer.unknown_score,
            answer.unknown_threshold,
            top.join(", ")
        )
    } else {
        format!("{}: {}", answer.file, top.join(", "))
    }
}

async fn predict_one(
    classifier: &Classifier,
    featurizer: &Featurizer,
    file: &str,
    runtime: &RuntimeEnv,
) -> Result<Prediction> {
    let (folder, name) = Location::of_file(file, runtime)?;
    let bytes = folder.get(&name).await?.with_context(|| format!("{file} does not exist"))?;
    let mut outcomes = classifier.predict(featurizer, &[&bytes])?;
    match outcomes.pop() {
        Some(outcome) => Ok(outcome?),
        None => bail!("the classifier returned no result for {file}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_answers_say_score_and_threshold() {
        let answer = Answer {
            file: "x.jpg",
            top: vec![Ranked { label: "Pear", probability: 0.9 }],
            unknown: true,
            unknown_score: 0.5,
            unknown_threshold: 0.25,
        };
        assert_eq!(describe(&answer), "x.jpg: unknown (score 0.5000 > threshold 0.2500); nearest known: Pear 0.9000");
        let known = Answer { unknown: false, ..answer };
        assert_eq!(describe(&known), "x.jpg: Pear 0.9000");
    }
}
