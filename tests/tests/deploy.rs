//! The fleet deployment files (deploy/): the Kubernetes manifests against the Kubernetes API's
//! schemas (kubernetes-validate, strict) and the PodMonitor against the Prometheus Operator's
//! CRD schema (check-jsonschema), offline; the scrape job and the rules with promtool; and
//! every metric name that the rules and the dashboard read, against a real scrape of observer.
//! The validators are installed by `cargo xtask setup` (xtask/src/setup.rs).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use observer_tests::{
    deploy::{
        kubernetes_definitions, model_schema, podmonitor_model, repo, standalone_schema, venv_tool,
        yaml_documents,
    },
    observer::Observer,
    promql::{from_grafana, metric_names},
    require_root,
    sandbox::TempDir,
};
use serde_json::{Value, json};

/// The oldest Kubernetes the manifests claim (securityContext.appArmorProfile came in 1.30);
/// the newest is the one the pinned kubernetes-validate defaults to.
const OLDEST_KUBERNETES: &str = "1.30";

/// Runs a command: (success, stdout and stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (`cargo xtask setup` installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn path(rel: &str) -> PathBuf {
    repo().join(rel)
}

/// Every YAML file under deploy/kubernetes.
fn manifests() -> Vec<PathBuf> {
    let dir = path("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

/// Every document of every manifest, with the file it comes from.
fn documents() -> Vec<(PathBuf, Value)> {
    manifests()
        .into_iter()
        .flat_map(|f| yaml_documents(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

/// The one document of `kind` in the manifests.
fn the(kind: &str) -> Value {
    let mut found: Vec<Value> = documents()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in deploy/kubernetes");
    found.remove(0)
}

fn kubernetes_validate(files: &[PathBuf], version: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(venv_tool("kubernetes-validate"));
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["-k", v]);
    }
    run(cmd.args(files))
}

#[test]
fn kubernetes_manifests_pass_strict_validation() {
    let files = manifests();
    let docs = documents();
    for version in [Some(OLDEST_KUBERNETES), None] {
        let (ok, out) = kubernetes_validate(&files, version);
        assert!(ok, "kubernetes-validate {version:?}:\n{out}");
        for (file, doc) in &docs {
            let kind = doc["kind"].as_str().expect("every document has a kind");
            let name = doc["metadata"]["name"].as_str().expect("and a name");
            // The Kubernetes schemas do not know the Operator's kinds: the next test checks
            // those against the Operator's own schema.
            let expect = if kind == "PodMonitor" {
                format!(
                    "{} Couldn't find schema for kind PodMonitor",
                    file.display()
                )
            } else {
                format!(
                    "{} passed for resource {}/{name}",
                    file.display(),
                    kind.to_lowercase()
                )
            };
            assert!(
                out.contains(&expect),
                "{version:?}: no `{expect}` in:\n{out}"
            );
        }
        // Nothing else: a misspelt apiVersion is only a warning to kubernetes-validate.
        for line in out.lines().filter(|l| !l.starts_with("INFO ")) {
            assert!(
                line.contains("Couldn't find schema for kind PodMonitor "),
                "{version:?}: {line}"
            );
        }
    }

    // The validation can fail: a field the API does not have is refused.
    let tmp = TempDir::new("k8s");
    let mut ds = the("DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = json!("Always");
    let bad = tmp.write("daemonset-typo.yaml", &ds.to_string());
    let (ok, out) = kubernetes_validate(&[bad], None);
    assert!(
        !ok && out.contains("'imagePullPolcy' was unexpected"),
        "a misspelt field passed:\n{out}"
    );
}

#[test]
fn podmonitor_passes_the_operators_crd_schema() {
    let crd = model_schema(&podmonitor_model()).expect("the PodMonitor model's schema");
    assert_eq!(crd["properties"]["kind"]["enum"], json!(["PodMonitor"]));
    assert_eq!(
        crd["properties"]["apiVersion"]["enum"],
        json!(["monitoring.coreos.com/v1"])
    );
    let schema = standalone_schema(crd, &kubernetes_definitions()).expect("a standalone schema");
    let tmp = TempDir::new("podmonitor");
    let schema_file = tmp.write("podmonitor.schema.json", &schema.to_string());
    let check = |name: &str, doc: &Value| {
        let instance = tmp.write(name, &doc.to_string());
        run(Command::new(venv_tool("check-jsonschema"))
            .arg("--schemafile")
            .arg(&schema_file)
            .arg(&instance))
    };

    let monitor = the("PodMonitor");
    let (ok, out) = check("podmonitor.json", &monitor);
    assert!(ok, "check-jsonschema:\n{out}");

    // It can fail: a misspelt field of an endpoint, and of the metadata (the Kubernetes part).
    let mut bad = monitor.clone();
    bad["spec"]["podMetricsEndpoints"][0]["intervall"] = json!("30s");
    let (ok, out) = check("endpoint-typo.json", &bad);
    assert!(
        !ok && out.contains("intervall"),
        "a misspelt field passed:\n{out}"
    );
    let mut bad = monitor.clone();
    bad["metadata"]["label"] = json!({"a": "b"});
    let (ok, out) = check("metadata-typo.json", &bad);
    assert!(
        !ok && out.contains("label"),
        "a misspelt field passed:\n{out}"
    );
    let mut bad = monitor;
    bad["spec"]["podMetricsEndpoints"][0]["port"] = json!(18090);
    let (ok, out) = check("port-number.json", &bad);
    assert!(!ok, "a port number where a port name goes passed:\n{out}");
}

/// The files name one another: what the PodMonitor and the scrape job select is what the
/// DaemonSet runs, the job is the one the alerts watch, and the DaemonSet's capabilities are the
/// systemd unit's.
#[test]
fn the_deployment_files_agree() {
    let ds = the("DaemonSet");
    let monitor = the("PodMonitor");
    let pod = &ds["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let namespace = ds["metadata"]["namespace"].as_str().unwrap();
    let labels = pod["metadata"]["labels"].as_object().unwrap();

    // The metrics port: named, bound on the pod's IP by observer, probed.
    let port = &container["ports"][0];
    let (port_name, port_number) = (
        port["name"].as_str().unwrap(),
        port["containerPort"].as_u64().unwrap(),
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&format!("--metrics-addr=$(POD_IP):{port_number}").as_str()),
        "{args:?}"
    );
    assert!(container["env"].as_array().unwrap().iter().any(
        |e| e["name"] == "POD_IP" && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    ));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], port_name, "{probe}");
        assert_eq!(container[probe]["httpGet"]["path"], "/", "{probe}");
    }

    // The PodMonitor selects these pods, in this namespace, on that port; its job label is the
    // pods' app.kubernetes.io/name.
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(labels.get(k), Some(v), "PodMonitor selector {k}");
    }
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([namespace])
    );
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], port_name);
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(labels[job_label], "observer");

    // So does the plain Prometheus job, whose name is the same job.
    let config = &yaml_documents(&path("deploy/prometheus/scrape-kubernetes.yml"))[0];
    let job = &config["scrape_configs"][0];
    assert_eq!(job["job_name"], "observer");
    let sd = &job["kubernetes_sd_configs"][0];
    assert_eq!(sd["role"], "pod");
    assert_eq!(sd["namespaces"]["names"], json!([namespace]));
    let selector = sd["selectors"][0]["label"].as_str().unwrap();
    let (k, v) = selector.split_once('=').unwrap();
    assert_eq!(labels[k], v, "scrape job selector");
    assert!(
        job["relabel_configs"].as_array().unwrap().iter().any(|r| {
            r["source_labels"] == json!(["__meta_kubernetes_pod_container_port_name"])
                && r["regex"] == port_name
                && r["action"] == "keep"
        }),
        "the scrape job keeps the `{port_name}` port"
    );

    // The alert on observer being down watches that job.
    let alerts = std::fs::read_to_string(path("deploy/prometheus/alerts.yml")).unwrap();
    assert!(alerts.contains(r#"up{job="observer"} == 0"#));

    // The capabilities: exactly the systemd unit's set (README, "Privileges"), all others
    // dropped, no privilege.
    let unit = std::fs::read_to_string(path("deploy/systemd/observer.service")).unwrap();
    let ambient: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    let security = &container["securityContext"];
    assert_eq!(security["capabilities"]["add"], json!(ambient));
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
}

#[test]
fn promtool_checks_the_scrape_job_and_the_rules() {
    let prom = path("deploy/prometheus");
    let config = prom.join("scrape-kubernetes.yml");
    let (ok, out) = run(Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&config));
    if !ok {
        // Debian builds Prometheus without Kubernetes service discovery (its NEWS: "Kubernetes
        // support has been completely removed"), so its promtool cannot read the job's
        // kubernetes_sd_configs. Everything else is checked by promtool with that block put
        // aside; the block itself against the fields Prometheus documents.
        assert!(
            out.contains("field kubernetes_sd_configs not found"),
            "promtool check config:\n{out}"
        );
        let tmp = TempDir::new("promtool");
        let mut doc = yaml_documents(&config).remove(0);
        for job in doc["scrape_configs"].as_array_mut().unwrap() {
            let job = job.as_object_mut().unwrap();
            if let Some(sd) = job.remove("kubernetes_sd_configs") {
                for sd in sd.as_array().unwrap() {
                    check_kubernetes_sd(sd);
                }
                job.insert(
                    "static_configs".into(),
                    json!([{"targets": ["observer.invalid:18090"]}]),
                );
            }
        }
        // The rule files, where the copy is.
        for rules in doc["rule_files"].as_array().unwrap() {
            let name = rules.as_str().unwrap();
            std::fs::copy(prom.join(name), tmp.join(name)).unwrap();
        }
        let copy = tmp.write("scrape-kubernetes.yml", &doc.to_string());
        let (ok, out) = run(Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(&copy));
        assert!(
            ok,
            "promtool check config (kubernetes_sd_configs put aside):\n{out}"
        );
    }

    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(prom.join("alerts.yml"))
        .arg(prom.join("records.yml")));
    assert!(ok, "promtool check rules:\n{out}");

    let tests: Vec<PathBuf> = std::fs::read_dir(prom.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules"])
        .args(&tests));
    assert!(ok, "promtool test rules:\n{out}");

    // Every alert has its unit test.
    let tested = tests
        .iter()
        .map(|t| std::fs::read_to_string(t).unwrap())
        .collect::<String>();
    for rule in rules(&prom.join("alerts.yml")) {
        if let Some(alert) = rule["alert"].as_str() {
            assert!(
                tested.contains(&format!("alertname: {alert}\n")),
                "no promtool test for {alert}"
            );
        }
    }
}

/// The fields of a kubernetes_sd_config that Prometheus documents, and their values where they
/// are few.
fn check_kubernetes_sd(sd: &Value) {
    const ROLES: &[&str] = &[
        "node",
        "service",
        "pod",
        "endpoints",
        "endpointslice",
        "ingress",
    ];
    const FIELDS: &[&str] = &[
        "api_server",
        "role",
        "kubeconfig_file",
        "namespaces",
        "selectors",
        "attach_metadata",
        "basic_auth",
        "authorization",
        "oauth2",
        "proxy_url",
        "no_proxy",
        "proxy_from_environment",
        "proxy_connect_header",
        "follow_redirects",
        "enable_http2",
        "tls_config",
    ];
    let sd = sd.as_object().unwrap();
    for key in sd.keys() {
        assert!(
            FIELDS.contains(&key.as_str()),
            "kubernetes_sd_configs: `{key}`"
        );
    }
    assert!(ROLES.contains(&sd["role"].as_str().unwrap()), "role");
    if let Some(ns) = sd.get("namespaces") {
        for key in ns.as_object().unwrap().keys() {
            assert!(
                ["names", "own_namespace"].contains(&key.as_str()),
                "namespaces: `{key}`"
            );
        }
    }
    for selector in sd
        .get("selectors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (key, value) in selector.as_object().unwrap() {
            assert!(
                ["role", "label", "field"].contains(&key.as_str()),
                "selectors: `{key}`"
            );
            if key == "role" {
                assert!(ROLES.contains(&value.as_str().unwrap()), "selector role");
            }
        }
    }
}

/// Every rule of a rule file.
fn rules(file: &Path) -> Vec<Value> {
    let doc = yaml_documents(file).remove(0);
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn dashboard() -> Value {
    let file = path("deploy/grafana/observer.json");
    serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Every panel of the dashboard, those inside rows included.
fn panels(dash: &Value) -> Vec<Value> {
    let mut all = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        all.push(p.clone());
        all.extend(p["panels"].as_array().into_iter().flatten().cloned());
    }
    all
}

/// Every query of the dashboard as PromQL, with where it is: panel targets and the variables'
/// `label_values(SELECTOR, label)`.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            queries.push((format!("panel `{}`", p["title"]), from_grafana(expr)));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|s| s.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
        queries.push((format!("variable `{}`", v["name"]), from_grafana(inner)));
    }
    queries
}

#[test]
fn the_dashboard_is_wired_to_its_variables() {
    let dash = dashboard();
    let vars: BTreeMap<String, Value> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    for name in ["job", "instance", "port"] {
        assert_eq!(vars[name]["type"], "query", "{name}");
    }
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], ds, "panel {}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"], ds, "panel {}", p["title"]);
            let expr = t["expr"].as_str().unwrap();
            for var in ["$job", "$instance"] {
                assert!(
                    expr.contains(var),
                    "panel {}: {expr} ignores {var}",
                    p["title"]
                );
            }
        }
    }
    let provisioning = &yaml_documents(&path("deploy/grafana/provisioning/dashboards.yml"))[0];
    let provider = &provisioning["providers"][0];
    assert_eq!(provider["type"], "file");
    assert!(provider["options"]["path"].as_str().is_some());
}

/// The names the rules and the dashboard read are names observer exports, checked against a
/// real scrape of an observer started with every metric family on; and the dashboard shows
/// every family observer exports.
#[test]
fn every_metric_the_rules_and_the_dashboard_read_is_exported() {
    require_root();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let observer = Observer::start(&[
        "--port",
        &port,
        "--idle-after",
        "5m",
        "--warn-connections",
        "100",
        "--by-remote",
    ]);
    let scrape = observer.scrape();

    let prom = path("deploy/prometheus");
    let mut queries = Vec::new();
    let mut recorded = BTreeSet::new();
    for file in ["alerts.yml", "records.yml"] {
        for rule in rules(&prom.join(file)) {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            if let Some(r) = rule["record"].as_str() {
                recorded.insert(r.to_string());
            }
            queries.push((
                format!("{file} {name}"),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    let dash = dashboard();
    let dashboard = dashboard_queries(&dash);
    queries.extend(dashboard.iter().cloned());

    let mut unknown = Vec::new();
    let mut read = BTreeSet::new();
    for (place, query) in &queries {
        let names = metric_names(query).unwrap_or_else(|e| panic!("{place}: {e}"));
        assert!(!names.is_empty(), "{place} reads no metric: {query}");
        for name in names {
            // `up` is Prometheus's own, for every target; a recorded name is checked through its
            // rule's expression.
            let known = scrape.exports(&name) || name == "up" || recorded.contains(&name);
            if !known {
                unknown.push(format!("{place}: {name}"));
            }
            read.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "names observer does not export:\n{}\nscrape:\n{}",
        unknown.join("\n"),
        scrape.text
    );

    // The dashboard covers every family of the scrape (a histogram through any of its series).
    let shown: BTreeSet<String> = dashboard
        .iter()
        .flat_map(|(_, q)| metric_names(q).unwrap())
        .collect();
    let families = scrape.families();
    let missing: Vec<&String> = families
        .keys()
        .filter(|f| {
            !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|s| shown.contains(&format!("{f}{s}")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "families the dashboard does not show: {missing:?}"
    );
    // And the flags above turned the idle and limit families on, which the alerts read.
    for name in [
        "observer_tcp_connections_idle",
        "observer_tcp_connections_limit",
    ] {
        assert!(families.contains_key(name), "{name} not exported");
        assert!(
            read.contains(name),
            "the rules or the dashboard read {name}"
        );
    }
    drop(listener);
}
