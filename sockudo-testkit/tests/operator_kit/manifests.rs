//! Checks of the Kubernetes manifests (deploy/kubernetes) as rendered: what
//! docs/operations.md asks of a deployment, and that no credential is a plain value.

use serde_yaml::Value;
use sockudo_server::config::{CliOverrides, NodeSettings};
use std::collections::HashMap;

use super::kit::{repo, TempDir};

/// Variable names that hold credentials, or may (a URL with a password in it).
fn is_credential(name: &str) -> bool {
    [
        "SECRET",
        "PASSWORD",
        "TOKEN",
        "_KEY",
        "USERNAME",
        "CONNECTION_STRING",
    ]
    .iter()
    .any(|w| name.contains(w))
        || (name.ends_with("_URL") && name != "NATS_URL")
}

fn find<'a>(resources: &'a [Value], kind: &str, name: &str) -> &'a Value {
    resources
        .iter()
        .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// Whether every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let (Some(sel), Some(labels)) = (selector.as_mapping(), labels.as_mapping()) else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn int(v: &Value, what: &str) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{what}: not an integer: {v:?}"))
}

/// The rendered ConfigMap `sockudo-config` as variables.
pub fn config_env(resources: &[Value]) -> HashMap<String, String> {
    let data = find(resources, "ConfigMap", "sockudo-config")["data"]
        .as_mapping()
        .expect("sockudo-config has data");
    data.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => panic!("{k:?}: ConfigMap values must be strings, got {other:?}"),
            };
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// Every check of one rendered variant (`what` names it in failures).
pub fn check(what: &str, resources: &[Value], secret_env: &[(&str, &str)]) {
    assert!(
        !resources.iter().any(|r| r["kind"] == "Secret"),
        "{what}: the manifests must not carry a Secret (credentials are created by the operator)"
    );
    let deployment = find(resources, "Deployment", "sockudo");
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(
        selects(&spec["selector"]["matchLabels"], pod_labels),
        "{what}: selector"
    );
    let env = config_env(resources);
    check_rollout(what, resources, spec, &env);
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "{what}");
    let c = &containers[0];
    check_ports_and_probes(what, c, &env);
    check_services(what, resources, pod_labels);
    check_env(what, c, &env);
    check_secrets(what, pod, c);
    check_settings(what, &env, secret_env);
}

/// One pod at a time (rolling update and PDB), spread over hosts, drained before SIGKILL.
fn check_rollout(what: &str, resources: &[Value], spec: &Value, env: &HashMap<String, String>) {
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    let rolling = &spec["strategy"]["rollingUpdate"];
    assert_eq!(spec["strategy"]["type"], "RollingUpdate", "{what}");
    assert_eq!(
        int(&rolling["maxUnavailable"], "maxUnavailable"),
        0,
        "{what}"
    );
    assert_eq!(int(&rolling["maxSurge"], "maxSurge"), 1, "{what}");

    let pdb = find(resources, "PodDisruptionBudget", "sockudo");
    assert_eq!(
        int(&pdb["spec"]["maxUnavailable"], "PDB maxUnavailable"),
        1,
        "{what}"
    );
    assert!(
        selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels),
        "{what}: PDB selector"
    );

    let spread = pod["topologySpreadConstraints"]
        .as_sequence()
        .expect("topology spread");
    assert!(
        spread
            .iter()
            .any(|c| c["topologyKey"] == "kubernetes.io/hostname"
                && selects(&c["labelSelector"]["matchLabels"], pod_labels)),
        "{what}: pods spread over hosts"
    );

    let grace: i64 = env["SHUTDOWN_GRACE_PERIOD"].parse().unwrap();
    let termination = int(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    assert!(
        termination >= grace + 10,
        "{what}: terminationGracePeriodSeconds {termination} must be at least SHUTDOWN_GRACE_PERIOD ({grace}) + 10"
    );
}

/// The container's ports are the configured ones; readiness on /ready, liveness on /health.
fn check_ports_and_probes(what: &str, c: &Value, env: &HashMap<String, String>) {
    let port = |name: &str| {
        c["ports"]
            .as_sequence()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| int(&p["containerPort"], name))
            .unwrap_or_else(|| panic!("{what}: no container port {name}"))
    };
    assert_eq!(
        port("http").to_string(),
        env["PORT"],
        "{what}: PORT is the http port"
    );
    assert_eq!(
        port("metrics").to_string(),
        env["METRICS_PORT"],
        "{what}: METRICS_PORT"
    );
    let readiness = &c["readinessProbe"]["httpGet"];
    assert_eq!(readiness["path"], "/ready", "{what}: readiness on /ready");
    assert_eq!(readiness["port"], "http", "{what}");
    let liveness = &c["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"], "/health", "{what}: liveness on /health");
    assert_eq!(liveness["port"], "http", "{what}");
}

/// The public Service, the metrics Service and the optional ServiceMonitor select the right
/// pods and ports.
fn check_services(what: &str, resources: &[Value], pod_labels: &Value) {
    let service = find(resources, "Service", "sockudo");
    assert!(
        selects(&service["spec"]["selector"], pod_labels),
        "{what}: Service selector"
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http", "{what}");
    let metrics = find(resources, "Service", "sockudo-metrics");
    assert!(
        selects(&metrics["spec"]["selector"], pod_labels),
        "{what}: metrics selector"
    );
    assert_eq!(
        metrics["spec"]["ports"][0]["targetPort"], "metrics",
        "{what}"
    );
    for sm in resources.iter().filter(|r| r["kind"] == "ServiceMonitor") {
        assert!(
            selects(
                &sm["spec"]["selector"]["matchLabels"],
                &metrics["metadata"]["labels"]
            ),
            "{what}: the ServiceMonitor selects sockudo-metrics"
        );
        assert!(
            !selects(
                &sm["spec"]["selector"]["matchLabels"],
                &service["metadata"]["labels"]
            ),
            "{what}: the ServiceMonitor selects only sockudo-metrics"
        );
        assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics", "{what}");
    }
}

/// SOCKUDO_NODE_ID from the pod name; no credential as a plain value anywhere.
fn check_env(what: &str, c: &Value, config: &HashMap<String, String>) {
    let env = c["env"].as_sequence().cloned().unwrap_or_default();
    let node_id = env
        .iter()
        .find(|e| e["name"] == "SOCKUDO_NODE_ID")
        .unwrap_or_else(|| panic!("{what}: SOCKUDO_NODE_ID"));
    assert_eq!(
        node_id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "{what}"
    );
    for e in &env {
        let name = e["name"].as_str().unwrap();
        if is_credential(name) {
            assert!(
                e.get("value").is_none() && !e["valueFrom"]["secretKeyRef"].is_null(),
                "{what}: {name} must come from a Secret (secretKeyRef), not a plain value"
            );
        }
    }
    assert!(
        !config.contains_key("SOCKUDO_NODE_ID"),
        "{what}: node id from the pod name only"
    );
    for (k, v) in config {
        assert!(!is_credential(k), "{what}: credential {k} in a ConfigMap");
        assert!(
            !(v.contains("://") && v.contains('@')),
            "{what}: {k} carries userinfo"
        );
    }
}

/// The Secrets are referenced, required, and the apps file comes from one.
fn check_secrets(what: &str, pod: &Value, c: &Value) {
    let env_from = c["envFrom"].as_sequence().expect("envFrom");
    let secret = env_from
        .iter()
        .find(|e| !e["secretRef"].is_null())
        .unwrap_or_else(|| panic!("{what}: envFrom a Secret"));
    assert_ne!(
        secret["secretRef"]["optional"],
        Value::Bool(true),
        "{what}: required Secret"
    );
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("{what}: --config"));
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| config_path.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{what}: {config_path} is mounted"));
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(
        !volume["secret"]["secretName"].is_null(),
        "{what}: the apps file comes from a Secret"
    );
}

/// Every ConfigMap key is a setting of the node, and the node accepts the whole environment
/// (ConfigMap + what the example's Secret holds) with an apps file.
fn check_settings(what: &str, config: &HashMap<String, String>, secret_env: &[(&str, &str)]) {
    let mut sources = String::new();
    let dir = repo().join("sockudo-server/src");
    sources.push_str(&std::fs::read_to_string(dir.join("config.rs")).unwrap());
    for f in std::fs::read_dir(dir.join("config")).unwrap() {
        sources.push_str(&std::fs::read_to_string(f.unwrap().path()).unwrap());
    }
    for k in config.keys() {
        assert!(
            sources.contains(&format!("\"{k}\"")),
            "{what}: {k} is not a setting of the node"
        );
    }
    let tmp = TempDir::new("manifests");
    let apps = tmp.path().join("sockudo.toml");
    std::fs::write(&apps, "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n").unwrap();
    let mut env = config.clone();
    env.insert("SOCKUDO_NODE_ID".into(), "sockudo-7d9c5b8f6-x2x4q".into());
    for (k, v) in secret_env {
        env.insert((*k).into(), (*v).into());
    }
    let cli = CliOverrides {
        config: Some(apps.display().to_string()),
        ..Default::default()
    };
    let settings = NodeSettings::load(&cli, &env)
        .unwrap_or_else(|e| panic!("{what}: the node refuses this configuration: {e}"));
    assert_eq!(
        settings.shutdown_grace_period.to_string(),
        config["SHUTDOWN_GRACE_PERIOD"]
    );
}

/// The rendered output of `dir` (relative to deploy/kubernetes).
pub fn rendered(dir: &str) -> Vec<Value> {
    super::kustomize::render(&repo().join("deploy/kubernetes").join(dir))
}
