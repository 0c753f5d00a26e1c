//! `fruits-classifier.onnx`: the backbone, the trained head and the unknown score in one graph.
//!
//! No ONNX library: the backbone's `ModelProto` is split into its top-level fields, every field
//! but `graph` is copied byte for byte, and the graph keeps all its fields (nodes, weights,
//! inputs) except the outputs; the head's nodes and initializers are appended after the
//! backbone's nodes (so the graph stays topologically sorted), followed by the new outputs
//! `probabilities` [N, classes] and `unknown_score` [N] (and the backbone's own output,
//! unless told otherwise). Only operators whose semantics are the same from opset 11 to the
//! latest are used: `MatMul`, `Add`, `Sub`, `Mul`, `Div`, `Max`, `Sqrt`, `Softmax` on the last
//! axis of a 2-D tensor, `TopK` with `K` as an input, and `Reshape`; reductions, whose `axes`
//! moved from attribute to input between opsets 13 and 18, are written as `MatMul` by a
//! column of ones or as `TopK`.

mod proto;
mod wire;

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::{ClassifierError, Result};
use crate::model::Model;
use crate::score::{Metric, NORM_EPSILON, ScoreKind, Space};
use proto::{
    ATTRIBUTE_INT, AttributeProto, Dimension, FLOAT, INT64, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};

/// Names of the composed model's outputs.
pub const PROBABILITIES: &str = "probabilities";
pub const UNKNOWN_SCORE: &str = "unknown_score";

/// Every node and initializer the composer adds is named under this prefix.
const PREFIX: &str = "fruits_classifier/";
/// The oldest default-domain opset whose `TopK` has the `largest` attribute.
const MIN_OPSET: i64 = 11;

// Field numbers of onnx.proto.
const MODEL_GRAPH: u32 = 7;
const MODEL_OPSET_IMPORT: u32 = 8;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const GRAPH_INPUT: u32 = 11;
const GRAPH_OUTPUT: u32 = 12;
const TENSOR_NAME: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeOptions {
    /// The backbone output holding the features the head was trained on.
    pub features_output: String,
    /// Keep that output in the composed model (after the two new ones).
    pub keep_features: bool,
}

impl Default for ComposeOptions {
    fn default() -> Self {
        Self { features_output: "features".to_owned(), keep_features: true }
    }
}

/// One dimension of a tensor: a size, or the name of a dynamic one (the batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

/// A graph input or output: its name and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<Dim>,
}

/// The composed model and what an app needs to know about its interface.
#[derive(Debug, Clone)]
pub struct Composed {
    pub bytes: Vec<u8>,
    /// The backbone's (first non-initializer) input.
    pub input: TensorInfo,
    pub outputs: Vec<TensorInfo>,
    /// The backbone's default-domain opset.
    pub opset: i64,
}

/// Composes `backbone` (ONNX `ModelProto` bytes) with `model`'s head and unknown score.
pub fn compose(backbone: &[u8], model: &Model, options: &ComposeOptions) -> Result<Composed> {
    model.validate()?;
    let top = wire::fields(backbone, "ModelProto")?;
    let opset = default_opset(&top)?;
    let graphs: Vec<&wire::Field<'_>> = top.iter().filter(|f| f.number == MODEL_GRAPH).collect();
    let [graph] = graphs[..] else {
        return Err(ClassifierError::onnx(format!("{} graph fields, expected 1", graphs.len()), "ModelProto.graph"));
    };
    if graph.wire_type != wire::LEN {
        return Err(ClassifierError::onnx(
            format!("wire type {}, expected a message", graph.wire_type),
            "ModelProto.graph",
        ));
    }
    let graph_fields = wire::fields(graph.payload, "ModelProto.graph")?;
    let backbone_info = read_graph(&graph_fields)?;

    let features = backbone_info.outputs.iter().find(|(v, _)| v.name == options.features_output).ok_or_else(|| {
        let names: Vec<&str> = backbone_info.outputs.iter().map(|(v, _)| v.name.as_str()).collect();
        ClassifierError::onnx(
            format!("no output named '{}' (outputs: {names:?})", options.features_output),
            "ModelProto.graph.output",
        )
    })?;
    let batch = check_features(&features.0, model.dim)?;
    for name in [PROBABILITIES, UNKNOWN_SCORE] {
        if backbone_info.names.iter().any(|n| n == name) {
            return Err(ClassifierError::onnx(
                format!("the backbone already has a value named '{name}'"),
                "ModelProto.graph",
            ));
        }
    }
    if let Some(n) = backbone_info.names.iter().find(|n| n.starts_with(PREFIX)) {
        return Err(ClassifierError::onnx(format!("the backbone already has a value named '{n}'"), "ModelProto.graph"));
    }

    let mut head = GraphBuilder::default();
    head.append_head(&options.features_output, model);

    let classes = model.classes() as i64;
    let mut outputs = vec![
        value_info(PROBABILITIES, vec![batch.clone(), fixed(classes)]),
        value_info(UNKNOWN_SCORE, vec![batch.clone()]),
    ];
    let mut output_fields = outputs.iter().map(Message::encode_to_vec).collect::<Vec<_>>();
    if options.keep_features {
        output_fields.push(features.1.to_vec());
        outputs.push(features.0.clone());
    }

    let mut new_graph = Vec::with_capacity(graph.payload.len() + head.size_hint());
    for field in graph_fields.iter().filter(|f| f.number != GRAPH_OUTPUT) {
        new_graph.extend_from_slice(field.raw);
    }
    for node in &head.nodes {
        wire::put_len_field(&mut new_graph, GRAPH_NODE, &node.encode_to_vec());
    }
    for tensor in &head.initializers {
        wire::put_len_field(&mut new_graph, GRAPH_INITIALIZER, &tensor.encode_to_vec());
    }
    for output in &output_fields {
        wire::put_len_field(&mut new_graph, GRAPH_OUTPUT, output);
    }

    let mut bytes = Vec::with_capacity(backbone.len() + head.size_hint() + 16);
    for field in &top {
        if field.number == MODEL_GRAPH {
            wire::put_len_field(&mut bytes, MODEL_GRAPH, &new_graph);
        } else {
            bytes.extend_from_slice(field.raw);
        }
    }
    Ok(Composed {
        bytes,
        input: backbone_info.input.ok_or_else(|| ClassifierError::onnx("no graph input", "ModelProto.graph.input"))?,
        outputs: outputs.iter().map(tensor_info).collect(),
        opset,
    })
}

fn default_opset(top: &[wire::Field<'_>]) -> Result<i64> {
    let mut version = None;
    for field in top.iter().filter(|f| f.number == MODEL_OPSET_IMPORT) {
        let opset = OperatorSetIdProto::decode(field.payload)
            .map_err(|e| ClassifierError::onnx(e.to_string(), "ModelProto.opset_import"))?;
        if opset.domain.is_empty() || opset.domain == "ai.onnx" {
            version = Some(opset.version);
        }
    }
    match version {
        Some(v) if v >= MIN_OPSET => Ok(v),
        Some(v) => Err(ClassifierError::onnx(
            format!("default-domain opset {v}; the head needs at least {MIN_OPSET}"),
            "ModelProto.opset_import",
        )),
        None => Err(ClassifierError::onnx("no default-domain opset", "ModelProto.opset_import")),
    }
}

struct GraphInfo<'a> {
    /// Every node output, initializer and input name.
    names: Vec<String>,
    input: Option<TensorInfo>,
    /// Decoded outputs with their raw bytes (copied as is when kept).
    outputs: Vec<(ValueInfoProto, &'a [u8])>,
}

fn read_graph<'a>(fields: &[wire::Field<'a>]) -> Result<GraphInfo<'a>> {
    let mut names = Vec::new();
    let mut initializers = Vec::new();
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        match field.number {
            GRAPH_NODE => {
                let node = NodeProto::decode(field.payload)
                    .map_err(|e| ClassifierError::onnx(e.to_string(), format!("ModelProto.graph.node (field {i})")))?;
                names.extend(node.output);
            }
            GRAPH_INITIALIZER => {
                // Only the name: the weights stay undecoded.
                let at = format!("ModelProto.graph.initializer (field {i})");
                for f in wire::fields(field.payload, &at)?.iter().filter(|f| f.number == TENSOR_NAME) {
                    let name = std::str::from_utf8(f.payload).map_err(|e| ClassifierError::onnx(e.to_string(), &at))?;
                    initializers.push(name.to_owned());
                }
            }
            GRAPH_INPUT | GRAPH_OUTPUT => {
                let at = if field.number == GRAPH_INPUT { "ModelProto.graph.input" } else { "ModelProto.graph.output" };
                let value =
                    ValueInfoProto::decode(field.payload).map_err(|e| ClassifierError::onnx(e.to_string(), at))?;
                if field.number == GRAPH_INPUT {
                    inputs.push(value);
                } else {
                    outputs.push((value, field.payload));
                }
            }
            _ => {}
        }
    }
    let input = inputs.iter().find(|v| !initializers.contains(&v.name)).map(tensor_info);
    names.extend(initializers);
    names.extend(inputs.into_iter().map(|v| v.name));
    Ok(GraphInfo { names, input, outputs })
}

/// Checks the features output is float `[batch, dim]` and returns its batch dimension.
fn check_features(features: &ValueInfoProto, dim: usize) -> Result<Dimension> {
    let at = format!("ModelProto.graph.output '{}'", features.name);
    let tensor = features
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| ClassifierError::onnx("not a tensor", &at))?;
    if tensor.elem_type != FLOAT {
        return Err(ClassifierError::onnx(format!("element type {}, expected float (1)", tensor.elem_type), &at));
    }
    let Some(shape) = tensor.shape.as_ref() else {
        return Ok(named("N"));
    };
    if shape.dim.len() != 2 {
        return Err(ClassifierError::onnx(format!("rank {}, expected [batch, {dim}]", shape.dim.len()), &at));
    }
    if let Some(d) = shape.dim[1].dim_value.filter(|&d| d != dim as i64) {
        return Err(ClassifierError::onnx(format!("{d} features, but the classifier was trained on {dim}"), &at));
    }
    let batch = &shape.dim[0];
    Ok(if batch.dim_value.is_some() || batch.dim_param.is_some() { batch.clone() } else { named("N") })
}

fn fixed(v: i64) -> Dimension {
    Dimension { dim_value: Some(v), dim_param: None }
}

fn named(name: &str) -> Dimension {
    Dimension { dim_value: None, dim_param: Some(name.to_owned()) }
}

fn value_info(name: &str, dims: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type: FLOAT, shape: Some(TensorShapeProto { dim: dims }) }),
        }),
        doc_string: String::new(),
    }
}

fn tensor_info(value: &ValueInfoProto) -> TensorInfo {
    let dims = value.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).and_then(|t| t.shape.as_ref());
    let shape = dims
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match (&d.dim_value, &d.dim_param) {
                    (Some(v), _) => Dim::Fixed(*v),
                    (None, Some(p)) => Dim::Named(p.clone()),
                    (None, None) => Dim::Named("?".to_owned()),
                })
                .collect()
        })
        .unwrap_or_default();
    TensorInfo { name: value.name.clone(), shape }
}

/// The nodes and initializers of the head, named under [`PREFIX`].
#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl GraphBuilder {
    fn size_hint(&self) -> usize {
        self.initializers.iter().map(|t| t.raw_data.len() + 64).sum::<usize>() + 128 * self.nodes.len()
    }

    fn float(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        let name = format!("{PREFIX}{name}");
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto { dims: dims.to_vec(), data_type: FLOAT, name: name.clone(), raw_data });
        name
    }

    fn int64(&mut self, name: &str, values: &[i64]) -> String {
        let name = format!("{PREFIX}{name}");
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims = vec![values.len() as i64];
        self.initializers.push(TensorProto { dims, data_type: INT64, name: name.clone(), raw_data });
        name
    }

    /// Adds a node with `outputs` (full names) and returns the first.
    fn node_to(&mut self, op: &str, inputs: &[&str], outputs: &[String], attributes: &[(&str, i64)]) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            name: format!("{}{}", PREFIX, outputs[0].trim_start_matches(PREFIX)),
            op_type: op.to_owned(),
            attribute: attributes
                .iter()
                .map(|&(name, i)| AttributeProto { name: name.to_owned(), i, r#type: ATTRIBUTE_INT })
                .collect(),
            domain: String::new(),
        });
        outputs[0].clone()
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attributes: &[(&str, i64)]) -> String {
        self.node_to(op, inputs, &[format!("{PREFIX}{output}")], attributes)
    }

    /// `TopK` with k = 1 on the last axis: the row maximum (or minimum) as `[N, 1]`.
    fn top1(&mut self, input: &str, output: &str, largest: bool) -> String {
        let k = self.int64(&format!("{output}/k"), &[1]);
        let outputs = [format!("{PREFIX}{output}"), format!("{PREFIX}{output}/indices")];
        self.node_to("TopK", &[input, &k], &outputs, &[("axis", -1), ("largest", i64::from(largest)), ("sorted", 1)])
    }

    fn append_head(&mut self, features: &str, model: &Model) {
        let (dim, classes) = (model.dim as i64, model.classes() as i64);
        let w = self.float("head/weights", &[dim, classes], &model.head.weights);
        let b = self.float("head/bias", &[classes], &model.head.bias);
        let product = self.node("MatMul", &[features, &w], "head/matmul", &[]);
        let logits = self.node("Add", &[&product, &b], "head/logits", &[]);
        let probabilities = self.node_to("Softmax", &[&logits], &[PROBABILITIES.to_owned()], &[("axis", -1)]);

        let one = self.float("score/one", &[1], &[1.0]);
        let flat = self.int64("score/flat_shape", &[-1]);
        let final_output = [UNKNOWN_SCORE.to_owned()];
        let ScoreKind::Prototypes { space, metric, .. } = model.score.kind else {
            let top = self.top1(&probabilities, "score/max_probability", true);
            let flat_top = self.node("Reshape", &[&top, &flat], "score/max_probability_flat", &[]);
            self.node_to("Sub", &[&one, &flat_top], &final_output, &[]);
            return;
        };
        let v = match space {
            Space::Raw => features.to_owned(),
            Space::Standardized => {
                let mean = self.float("score/mean", &[dim], &model.standardizer.mean);
                let inv_std = self.float("score/inv_std", &[dim], &model.standardizer.inv_std);
                let centred = self.node("Sub", &[features, &mean], "score/centred", &[]);
                self.node("Mul", &[&centred, &inv_std], "score/standardized", &[])
            }
        };
        let count = model.score.prototype_count();
        let d = model.dim;
        let mut transposed = vec![0.0f32; d * count];
        for (j, p) in model.score.prototypes.chunks_exact(d).enumerate() {
            for (i, &value) in p.iter().enumerate() {
                transposed[i * count + j] = value;
            }
        }
        let prototypes = self.float("score/prototypes_t", &[dim, count as i64], &transposed);
        let ones = self.float("score/ones", &[dim, 1], &vec![1.0; d]);
        let squares = self.node("Mul", &[&v, &v], "score/squares", &[]);
        let squared_norm = self.node("MatMul", &[&squares, &ones], "score/squared_norm", &[]);
        let dots = self.node("MatMul", &[&v, &prototypes], "score/dots", &[]);
        let distance = match metric {
            Metric::Cosine => {
                let best = self.top1(&dots, "score/best_dot", true);
                let eps = self.float("score/epsilon", &[1], &[NORM_EPSILON as f32]);
                let clamped = self.node("Max", &[&squared_norm, &eps], "score/squared_norm_clamped", &[]);
                let norm = self.node("Sqrt", &[&clamped], "score/norm", &[]);
                let cosine = self.node("Div", &[&best, &norm], "score/cosine", &[]);
                self.node("Sub", &[&one, &cosine], "score/distance", &[])
            }
            Metric::Euclidean => {
                let norms: Vec<f32> = model
                    .score
                    .prototypes
                    .chunks_exact(d)
                    .map(|p| p.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>() as f32)
                    .collect();
                let prototype_norms = self.float("score/prototype_squared_norms", &[count as i64], &norms);
                let two = self.float("score/two", &[1], &[2.0]);
                let zero = self.float("score/zero", &[1], &[0.0]);
                let twice = self.node("Mul", &[&dots, &two], "score/twice_dots", &[]);
                let partial = self.node("Sub", &[&squared_norm, &twice], "score/partial", &[]);
                let squared = self.node("Add", &[&partial, &prototype_norms], "score/squared_distances", &[]);
                let nearest = self.top1(&squared, "score/nearest", false);
                let clamped = self.node("Max", &[&nearest, &zero], "score/nearest_clamped", &[]);
                self.node("Sqrt", &[&clamped], "score/distance", &[])
            }
        };
        self.node_to("Reshape", &[&distance, &flat], &final_output, &[]);
    }
}
