//! Renders a Kustomize directory offline, as `kustomize build` would for the features deploy/
//! uses: `resources` (files and directories), `components`, `configMapGenerator` (create and
//! merge of literals), `labels` (metadata only) and `images`. Any other field fails the test,
//! so a manifest can never rely on something this renderer silently skips. (Generated names
//! keep no hash suffix here; kustomize adds one and rewrites the references.)

use std::path::Path;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::kit::load_yaml;

const FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "resources",
    "components",
    "configMapGenerator",
    "labels",
    "images",
];

/// Every resource `kustomize build dir` outputs.
pub fn render(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    render_into(dir, "Kustomization", &mut out);
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn render_into(dir: &Path, kind: &str, out: &mut Vec<Value>) {
    let k = load_yaml(&dir.join("kustomization.yaml"));
    let map = k.as_mapping().expect("kustomization is a mapping");
    for key in map.keys() {
        let key = key.as_str().unwrap_or("?");
        assert!(
            FIELDS.contains(&key),
            "{dir:?}: the renderer does not know `{key}`"
        );
    }
    assert_eq!(k["kind"].as_str(), Some(kind), "{dir:?}");
    let mut own = Vec::new();
    for r in strings(&k["resources"]) {
        let path = dir.join(&r);
        if path.is_dir() {
            render_into(&path, "Kustomization", &mut own);
        } else {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                if !v.is_null() {
                    own.push(v);
                }
            }
        }
    }
    for c in strings(&k["components"]) {
        render_into(&dir.join(c), "Component", &mut own);
    }
    for g in k["configMapGenerator"]
        .as_sequence()
        .cloned()
        .unwrap_or_default()
    {
        generate_config_map(dir, &g, &mut own);
    }
    for l in k["labels"].as_sequence().cloned().unwrap_or_default() {
        for flag in ["includeSelectors", "includeTemplates"] {
            assert!(
                !l[flag].as_bool().unwrap_or(false),
                "{dir:?}: labels.{flag} is not rendered"
            );
        }
        let pairs = l["pairs"].as_mapping().expect("labels.pairs");
        for r in &mut own {
            let labels = entry(entry(r, "metadata"), "labels");
            for (k, v) in pairs {
                labels
                    .as_mapping_mut()
                    .unwrap()
                    .insert(k.clone(), v.clone());
            }
        }
    }
    for image in k["images"].as_sequence().cloned().unwrap_or_default() {
        set_image(&image, &mut own);
    }
    out.extend(own);
}

/// `map[key]`, created as an empty mapping when missing.
fn entry<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    let map = v.as_mapping_mut().expect("a mapping");
    map.entry(Value::from(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()))
}

fn generate_config_map(dir: &Path, g: &Value, own: &mut Vec<Value>) {
    let name = g["name"].as_str().expect("generator name");
    let mut data = Mapping::new();
    for lit in strings(&g["literals"]) {
        let (k, v) = lit
            .split_once('=')
            .unwrap_or_else(|| panic!("{dir:?}: literal {lit:?}"));
        data.insert(Value::from(k), Value::from(v));
    }
    match g["behavior"].as_str().unwrap_or("create") {
        "create" => {
            let mut cm = Mapping::new();
            cm.insert("apiVersion".into(), "v1".into());
            cm.insert("kind".into(), "ConfigMap".into());
            let mut meta = Mapping::new();
            meta.insert("name".into(), name.into());
            cm.insert("metadata".into(), Value::Mapping(meta));
            cm.insert("data".into(), Value::Mapping(data));
            own.push(Value::Mapping(cm));
        }
        "merge" => {
            let cm = own
                .iter_mut()
                .find(|r| r["kind"] == "ConfigMap" && r["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{dir:?}: merge into missing ConfigMap {name}"));
            let existing = entry(cm, "data").as_mapping_mut().unwrap();
            for (k, v) in data {
                existing.insert(k, v);
            }
        }
        other => panic!("{dir:?}: generator behavior {other} is not rendered"),
    }
}

fn set_image(image: &Value, own: &mut [Value]) {
    let name = image["name"].as_str().expect("images.name");
    for r in own.iter_mut().filter(|r| r["kind"] == "Deployment") {
        let containers = r["spec"]["template"]["spec"]["containers"]
            .as_sequence_mut()
            .unwrap();
        for c in containers {
            let current = c["image"].as_str().unwrap_or_default().to_owned();
            let (base, tag) = current.split_once(':').unwrap_or((&current, "latest"));
            if base != name {
                continue;
            }
            let base = image["newName"].as_str().unwrap_or(base);
            let tag = image["newTag"].as_str().unwrap_or(tag);
            c["image"] = Value::from(format!("{base}:{tag}"));
        }
    }
}
