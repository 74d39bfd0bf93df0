//! The deployment files of deploy/ and their validators: where `cargo xtask setup` installs
//! those (`deploy_validators` in xtask/src/setup.rs), the manifests read as JSON values, and
//! the PodMonitor's JSON Schema, built from the Prometheus Operator's CRD schema (as the npm
//! package @kubernetes-models/prometheus-operator 1.x ships it) and the Kubernetes API's
//! ObjectMeta (as kubernetes-validate ships it).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Map, Value, json};

/// Where setup installs the validators (`DEPLOY_TOOLS` in xtask/src/setup.rs).
pub const TOOLS: &str = "/var/cache/observer-tools";
/// The npm package, unpacked (setup's `operator_models_dir`).
const OPERATOR_MODELS: &str = "npm/prometheus-operator-1.6.3";

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// A program of the validators' venv (kubernetes-validate, check-jsonschema, python).
pub fn venv_tool(name: &str) -> PathBuf {
    let path = Path::new(TOOLS).join("venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask setup` installs it",
        path.display()
    );
    path
}

/// Every document of a YAML file, as JSON values (empty documents left out).
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    docs.into_iter().filter(|v| !v.is_null()).collect()
}

/// The Kubernetes API's definitions in kubernetes-validate's strict schemas (no field they do
/// not name), for the newest Kubernetes release the installed package knows.
pub fn kubernetes_definitions() -> Value {
    let out = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))",
        ])
        .output()
        .expect("running the venv's python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let schemas =
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("kubernetes-json-schema");
    let newest = std::fs::read_dir(&schemas)
        .unwrap_or_else(|e| panic!("{}: {e}", schemas.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let version = name.strip_prefix('v')?.strip_suffix("-local-strict")?;
            let parts: Vec<u32> = version
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some((parts, name))
        })
        .max()
        .map(|(_, name)| name)
        .expect("kubernetes-validate ships strict schemas");
    let defs = schemas.join(newest).join("_definitions.json");
    let text = std::fs::read_to_string(&defs)
        .unwrap_or_else(|e| panic!("reading {}: {e}", defs.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", defs.display()))
}

/// The npm package's PodMonitor model (a JavaScript module that holds the CRD's schema).
pub fn podmonitor_model() -> String {
    let path = Path::new(TOOLS)
        .join(OPERATOR_MODELS)
        .join("monitoring.coreos.com/v1/PodMonitor.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (`cargo xtask setup` unpacks it)",
            path.display()
        )
    })
}

/// The schema object a model module declares (`const schema = {...};`): JSON, as the package's
/// generator writes it.
pub fn model_schema(js: &str) -> Result<Value, String> {
    const START: &str = "const schema = ";
    let start = js.find(START).ok_or("no `const schema = ` in the module")? + START.len();
    let len = js[start..]
        .find("\n};")
        .ok_or("the schema object does not end with `};`")?;
    serde_json::from_str(&js[start..start + len + 2]).map_err(|e| format!("the schema object: {e}"))
}

/// A JSON Schema (2020-12) that check-jsonschema can apply on its own: the CRD's schema, made as
/// strict as the API server's strict field validation (`kubectl apply`'s default), which
/// refuses fields the schema does not name; its references to Kubernetes types
/// (`io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#`) pointed at `definitions`, which are
/// embedded.
pub fn standalone_schema(mut crd: Value, definitions: &Value) -> Result<Value, String> {
    let defs = definitions
        .get("$defs")
        .and_then(Value::as_object)
        .ok_or("the definitions have no $defs")?;
    forbid_unknown_fields(&mut crd);
    relink(&mut crd, defs)?;
    let mut embedded = Value::Object(defs.clone());
    relink(&mut embedded, defs)?;
    let schema = crd
        .as_object_mut()
        .ok_or("the CRD's schema is not an object")?;
    schema.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    schema.insert("$defs".into(), embedded);
    Ok(crd)
}

/// `additionalProperties: false` on every object schema that names its properties and allows
/// no others (no `additionalProperties`, no `x-kubernetes-preserve-unknown-fields`), through
/// the places that hold schemas (never through `enum` or `default` data).
fn forbid_unknown_fields(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let open = obj.contains_key("additionalProperties")
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if obj.get("properties").is_some_and(Value::is_object) && !open {
        obj.insert("additionalProperties".into(), json!(false));
    }
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        props.values_mut().for_each(forbid_unknown_fields);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = obj.get_mut(key) {
            forbid_unknown_fields(sub);
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(Value::Array(subs)) = obj.get_mut(key) {
            subs.iter_mut().for_each(forbid_unknown_fields);
        }
    }
}

/// Points every `$ref` at the embedded definitions: the model's `NAME#` and
/// kubernetes-validate's `/api/_definitions.json#/$defs/NAME` become `#/$defs/NAME`. A
/// reference to anything else is an error: check-jsonschema would try to fetch it.
fn relink(schema: &mut Value, defs: &Map<String, Value>) -> Result<(), String> {
    match schema {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get_mut("$ref") {
                let name = r
                    .strip_prefix("/api/_definitions.json#/$defs/")
                    .or_else(|| r.strip_prefix("#/$defs/"))
                    .or_else(|| r.strip_suffix('#'))
                    .filter(|name| defs.contains_key(*name))
                    .ok_or_else(|| format!("a reference to nothing embedded: {r}"))?;
                *r = format!("#/$defs/{name}");
            }
            obj.values_mut().try_for_each(|v| relink(v, defs))
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| relink(v, defs)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"const base_1 = require("@kubernetes-models/base");
const schemaId = "monitoring.coreos.com.v1.PodMonitor";
const schema = {
    "type": "object",
    "properties": {
        "metadata": {
            "oneOf": [
                {
                    "$ref": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#"
                },
                {
                    "type": "null"
                }
            ]
        },
        "spec": {
            "properties": {
                "selector": {
                    "properties": {
                        "matchLabels": {
                            "additionalProperties": {
                                "type": "string"
                            },
                            "type": "object"
                        }
                    },
                    "type": "object"
                },
                "raw": {
                    "type": "object",
                    "properties": {
                        "properties": {
                            "type": "string"
                        }
                    },
                    "x-kubernetes-preserve-unknown-fields": true
                },
                "podMetricsEndpoints": {
                    "items": {
                        "properties": {
                            "port": {
                                "type": "string"
                            }
                        },
                        "type": "object"
                    },
                    "type": "array"
                }
            },
            "type": "object"
        }
    }
};
class PodMonitor extends base_1.Model {}
"#;

    fn definitions() -> Value {
        json!({"$defs": {
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {
                "properties": {
                    "name": {"type": "string"},
                    "creationTimestamp": {
                        "$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.Time"
                    }
                },
                "additionalProperties": false
            },
            "io.k8s.apimachinery.pkg.apis.meta.v1.Time": {"type": "string"}
        }})
    }

    #[test]
    fn reads_the_schema_a_model_declares() {
        let schema = model_schema(MODEL).unwrap();
        assert_eq!(schema["properties"]["spec"]["type"], "object");
        assert!(model_schema("const other = {};").is_err());
        assert!(model_schema("const schema = {\"a\": };\n};").is_err());
    }

    #[test]
    fn a_standalone_schema_refuses_unknown_fields_and_embeds_objectmeta() {
        let s = standalone_schema(model_schema(MODEL).unwrap(), &definitions()).unwrap();
        let spec = &s["properties"]["spec"];
        assert_eq!(spec["additionalProperties"], false);
        assert_eq!(
            spec["properties"]["selector"]["additionalProperties"],
            false
        );
        assert_eq!(
            spec["properties"]["podMetricsEndpoints"]["items"]["additionalProperties"],
            false
        );
        // A map keeps its own rule; an object that keeps unknown fields stays open (and a field
        // named "properties" is a field, not a schema keyword).
        assert_eq!(
            spec["properties"]["selector"]["properties"]["matchLabels"]["additionalProperties"],
            json!({"type": "string"})
        );
        assert!(
            spec["properties"]["raw"]
                .get("additionalProperties")
                .is_none()
        );
        assert_eq!(
            s["properties"]["metadata"]["oneOf"][0]["$ref"],
            "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert_eq!(
            s["$defs"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["creationTimestamp"]
                ["$ref"],
            "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.Time"
        );
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    }

    #[test]
    fn a_reference_to_nothing_embedded_is_an_error() {
        let crd = json!({"properties": {"x": {"$ref": "https://example.invalid/x.json"}}});
        assert!(standalone_schema(crd, &definitions()).is_err());
        let crd = json!({"properties": {"x": {"$ref": "io.k8s.NotThere#"}}});
        assert!(standalone_schema(crd, &definitions()).is_err());
    }
}
