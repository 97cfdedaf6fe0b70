//! What `deploy/` ships is checked with the tools that will read it: the
//! systemd unit by `systemd-analyze verify` (and against what the Debian
//! package installs), the Kubernetes base rendered by
//! kustomize and validated against the API schemas, the alerts by promtool
//! (syntax and unit tests), the dashboard's queries by promtool, the
//! Dockerfile by hadolint; and the binary speaks the sd_notify protocol to a
//! supervisor. `scripts/services` installs the tools (promtool from Debian,
//! the rest into /opt/fishjam-bridge-tools from PyPI).

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TOOLS: &str = "/opt/fishjam-bridge-tools/bin";

/// A validation tool: from the tools folder first, then PATH.
pub(crate) fn tool(name: &str) -> PathBuf {
    let bundled = Path::new(TOOLS).join(name);
    if bundled.exists() {
        return bundled;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.exists())
    });
    found.unwrap_or_else(|| panic!("{name} is not installed; `bash scripts/services` installs it"))
}

pub(crate) fn deploy(path: &str) -> PathBuf {
    Path::new(ROOT).join("deploy").join(path)
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy("systemd/fishjam-bridge.service")).unwrap();
    assert!(unit.contains("\nType=notify\n") && unit.contains("\nWatchdogSec="));
    // verify checks that ExecStart's binary exists: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fishjam-bridge.service");
    std::fs::write(&path, unit.replace("/usr/bin/fishjam-bridge", BIN)).unwrap();
    // The socket units that hold its listeners across restarts, beside it.
    let sockets = [
        "fishjam-bridge-webhook.socket",
        "fishjam-bridge-admin.socket",
    ]
    .map(|name| {
        let socket = dir.path().join(name);
        std::fs::copy(deploy(&format!("systemd/{name}")), &socket).unwrap();
        socket
    });
    let output = succeed(
        Command::new(tool("systemd-analyze"))
            .arg("verify")
            .arg(&path)
            .args(&sockets),
    );
    // Unknown keys and bad values are only warnings: none is allowed.
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(warnings.trim().is_empty(), "{warnings}");
}

/// The unit's lines that start with `key=`, without the key.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// The Debian package (`[package.metadata.deb]`, scripts/package-test)
/// installs what the unit names where it names it, makes the user it runs
/// as, and its maintainer scripts handle every unit in deploy/systemd.
#[test]
fn the_package_installs_what_the_systemd_unit_names() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap())
            .unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    // Where each asset lands, as an absolute path.
    let installed = |source: &str| -> String {
        let asset = deb["assets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|asset| asset[0].as_str() == Some(source))
            .unwrap_or_else(|| panic!("the package has no asset {source}"));
        let dest = asset[1].as_str().unwrap();
        let file = Path::new(source).file_name().unwrap().to_str().unwrap();
        match dest.strip_suffix('/') {
            Some(dir) => format!("/{dir}/{file}"),
            None => format!("/{dest}"),
        }
    };

    let unit = std::fs::read_to_string(deploy("systemd/fishjam-bridge.service")).unwrap();
    let binary = installed("target/release/fishjam-bridge");
    let config = installed("config.example.toml");
    assert_eq!(binary, "/usr/bin/fishjam-bridge");
    let commands = [
        unit_values(&unit, "ExecStartPre"),
        unit_values(&unit, "ExecStart"),
    ]
    .concat();
    assert_eq!(commands.len(), 2);
    for command in commands {
        assert!(
            command.starts_with(&format!("{binary} "))
                && command.ends_with(&format!(" --config {config}")),
            "{command}"
        );
    }

    // Every unit, into systemd's folder for packages.
    let units: BTreeSet<String> = std::fs::read_dir(deploy("systemd"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".service") || name.ends_with(".socket"))
        .collect();
    assert_eq!(units.len(), 3);
    for name in &units {
        assert_eq!(
            installed(&format!("deploy/systemd/{name}")),
            format!("/usr/lib/systemd/system/{name}")
        );
    }

    // The user the unit runs as is the one the sysusers.d file makes.
    assert_eq!(
        installed("deploy/systemd/fishjam-bridge.sysusers"),
        "/usr/lib/sysusers.d/fishjam-bridge.conf"
    );
    let sysusers = std::fs::read_to_string(deploy("systemd/fishjam-bridge.sysusers")).unwrap();
    let made: Vec<&str> = sysusers
        .lines()
        .filter_map(|line| line.strip_prefix("u "))
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(made, ["fishjam-bridge"]);
    assert_eq!(unit_values(&unit, "User"), made);
    assert_eq!(unit_values(&unit, "Group"), made);
    assert!(unit_values(&unit, "DynamicUser").is_empty());

    // The maintainer scripts start, stop and purge every unit; the purge
    // deletes the secrets and the environment file the unit reads beside the
    // configuration, and the state directory unless its spool holds a
    // segment (scripts/package-test runs both).
    let scripts = Path::new(ROOT).join(deb["maintainer-scripts"].as_str().unwrap());
    for script in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(scripts.join(script)).unwrap();
        for name in &units {
            assert!(text.contains(name), "{script} does not name {name}");
        }
    }
    let postrm = std::fs::read_to_string(scripts.join("postrm")).unwrap();
    let secrets = unit_values(&unit, "LoadCredential")
        .into_iter()
        .map(|credential| credential.split_once(':').unwrap().1)
        .chain(
            unit_values(&unit, "EnvironmentFile")
                .into_iter()
                .map(|file| file.trim_start_matches('-')),
        )
        .collect::<Vec<_>>();
    assert_eq!(secrets.len(), 3);
    for secret in secrets {
        assert!(postrm.contains(secret), "postrm does not delete {secret}");
    }
    assert_eq!(unit_values(&unit, "StateDirectory"), ["fishjam-bridge"]);
    // The state directory goes, but for a spool that still holds a segment.
    assert!(postrm.contains("state=\"${DPKG_ROOT:-}/var/lib/fishjam-bridge\""));
    assert!(postrm.contains("rm -rf \"$state\""));
    assert!(postrm.contains("spool drain"));
}

/// The rendered base, as JSON documents.
fn kustomize() -> (String, Vec<Value>) {
    kustomize_dir(&deploy("kubernetes"))
}

/// The base with the monitoring component, as an overlay that adds it
/// renders it: JSON documents.
fn kustomize_with_monitoring() -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    // kustomize takes only relative paths: climb to / and down to the base.
    let climb = "../".repeat(dir.path().components().count() - 1);
    let relative =
        |path: PathBuf| format!("{climb}{}", path.to_str().unwrap().trim_start_matches('/'));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "resources: [{}]\ncomponents: [{}]\n",
            relative(deploy("kubernetes")),
            relative(deploy("kubernetes/monitoring"))
        ),
    )
    .unwrap();
    kustomize_dir(dir.path()).1
}

/// YAML documents as JSON, read by PyYAML.
fn yaml_documents(text: &str) -> Vec<Value> {
    let mut python = Command::new(tool("python3"));
    python
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = python.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "PyYAML reads the YAML");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn kustomize_dir(dir: &Path) -> (String, Vec<Value>) {
    let output = succeed(Command::new(tool("kubectl")).arg("kustomize").arg(dir));
    let rendered = String::from_utf8(output.stdout).unwrap();
    let documents = yaml_documents(&rendered);
    (rendered, documents)
}

fn find<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("the base has a {kind}"))
}

#[test]
fn the_kubernetes_base_renders_valid_and_consistent() {
    let (rendered, documents) = kustomize();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rendered.yaml");
    std::fs::write(&path, &rendered).unwrap();
    let output = succeed(
        Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--quiet"])
            .arg(&path),
    );
    let report = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    // The base needs no CRD: every document is one of Kubernetes' own.
    assert!(report.trim().is_empty(), "{report}");
    assert!(documents.iter().all(|d| d["kind"] != "ServiceMonitor"));

    let deployment = find(&documents, "StatefulSet");
    // The spool outlives the pod: a volume claim per replica, mounted at the
    // state directory the image and the environment name.
    let claim = &deployment["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "state");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let service = find(&documents, "Service");
    // The monitoring component: its ServiceMonitor is checked against the
    // Service below, its PrometheusRule holds the alerts of the rules file.
    let monitoring = kustomize_with_monitoring();
    let monitor = find(&monitoring, "ServiceMonitor");
    let rules = std::fs::read_to_string(deploy("prometheus/fishjam-bridge.rules.yml")).unwrap();
    assert_eq!(
        find(&monitoring, "PrometheusRule")["spec"]["groups"],
        yaml_documents(&rules)[0]["groups"],
        "deploy/kubernetes/monitoring/prometheusrule.yaml holds the rules file's alerts"
    );
    let budget = find(&documents, "PodDisruptionBudget");
    let config_map = find(&documents, "ConfigMap");
    let secret = find(&documents, "Secret");

    // The pod runs as a service account allowed the notifier's Lease and
    // nothing else, and elects the notifier's holder through it.
    let account = find(&documents, "ServiceAccount");
    let role = find(&documents, "Role");
    let binding = find(&documents, "RoleBinding");
    assert_eq!(
        pod["spec"]["serviceAccountName"],
        account["metadata"]["name"]
    );
    assert_eq!(pod["spec"]["automountServiceAccountToken"], true);
    assert_eq!(
        role["rules"],
        serde_json::json!([{
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }])
    );
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": account["metadata"]["name"]}])
    );
    assert!(container["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|var| var["name"] == "FISHJAM_BRIDGE__ELECTION__BACKEND"
            && var["value"] == "kubernetes"));
    assert_eq!(deployment["spec"]["replicas"], 2);

    // The selectors pick the pods.
    let pod_labels = pod["metadata"]["labels"].as_object().unwrap();
    let selects = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    assert!(selects(&service["spec"]["selector"]));
    assert!(selects(&budget["spec"]["selector"]["matchLabels"]));
    assert!(monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| service["metadata"]["labels"].get(k) == Some(v)));
    let service_ports: BTreeSet<&str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(service_ports.contains(monitor["spec"]["endpoints"][0]["port"].as_str().unwrap()));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);

    // The ConfigMap is the example config.
    let example = std::fs::read_to_string(Path::new(ROOT).join("config.example.toml")).unwrap();
    assert_eq!(config_map["data"]["config.toml"], example.as_str());

    // The pod's config, environment and secret files make a valid
    // configuration, and its grace period outlasts the drain.
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let state_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "state")
        .expect("the claim is mounted")["mountPath"]
        .as_str()
        .unwrap();
    assert!(
        env.contains(&("STATE_DIRECTORY".to_owned(), state_mount.to_owned())),
        "the spool is on the claim: {env:?}"
    );
    let secrets_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "secrets")
        .unwrap()["mountPath"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &example).unwrap();
    let mut check = Command::new(BIN);
    check.args(["check-config", "--config"]).arg(&config);
    for (name, value) in &env {
        let value = match value.strip_prefix(&format!("{secrets_mount}/")) {
            Some(key) => {
                let file = dir.path().join(key);
                std::fs::write(&file, secret["stringData"][key].as_str().unwrap()).unwrap();
                file.to_str().unwrap().to_owned()
            }
            None => value.clone(),
        };
        check.env(name, value);
    }
    let output = succeed(&mut check);
    let described = String::from_utf8(output.stdout).unwrap();
    assert!(described.contains("0.0.0.0:9090"), "{described}");
    assert!(described.contains("management_token = set"), "{described}");
    let drain = described
        .lines()
        .find_map(|l| l.trim().strip_prefix("pipeline.drain_timeout = "))
        .map(|d| humantime::parse_duration(d).unwrap())
        .expect("check-config names the drain timeout");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    assert!(Duration::from_secs(grace) > drain + Duration::from_secs(pause));
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    succeed(
        Command::new(tool("promtool"))
            .args(["check", "rules"])
            .arg(deploy("prometheus/fishjam-bridge.rules.yml")),
    );
    succeed(
        Command::new(tool("promtool"))
            .args(["test", "rules", "fishjam-bridge.rules.test.yml"])
            .current_dir(deploy("prometheus")),
    );
}

/// Every PromQL expression of the dashboard, with its variables filled in.
pub fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/fishjam-bridge.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has queries", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            queries.push(
                expr.replace("$__rate_interval", "5m")
                    .replace("$job", ".*")
                    .replace("$instance", ".*"),
            );
        }
    }
    queries
}

/// Every metric name the dashboard and the alerts query.
pub fn queried_metric_names() -> BTreeSet<String> {
    let mut text = dashboard_queries().join("\n");
    text += &std::fs::read_to_string(deploy("prometheus/fishjam-bridge.rules.yml")).unwrap();
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("fishjam_bridge_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = name
            .strip_suffix("_bucket")
            .unwrap_or(name)
            .trim_end_matches('_');
        // `fishjam_bridge_` alone appears in prose.
        if name.len() > "fishjam_bridge_".len() {
            names.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_queries_parse() {
    let queries = dashboard_queries();
    assert!(queries.len() > 20);
    // promtool parses PromQL in recording rules: one rule per query.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        rules += &format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(query).unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, rules).unwrap();
    succeed(
        Command::new(tool("promtool"))
            .args(["check", "rules"])
            .arg(&path),
    );
    let names = queried_metric_names();
    for name in ["fishjam_bridge_room_events_total", "fishjam_bridge_rooms"] {
        assert!(names.contains(name), "the dashboard shows {name}");
    }
}

#[test]
fn the_dockerfile_lints_clean() {
    succeed(
        Command::new(tool("hadolint"))
            .arg("--config")
            .arg(deploy("docker/.hadolint.yaml"))
            .arg(deploy("docker/Dockerfile")),
    );
}

#[test]
fn the_bridge_notifies_its_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut bridge = BridgeProcess::spawn(
        &Conf::new(),
        Stdio::null(),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let mut messages: Vec<String> = Vec::new();
    let mut receive_until = |what: &str, done: &dyn Fn(&[String]) -> bool| {
        let mut buffer = [0u8; 4096];
        wait_for(&format!("{what} from the bridge"), WAIT, NO_PAUSE, || {
            if done(&messages) {
                return Ok(());
            }
            if let Ok(n) = socket.recv(&mut buffer) {
                messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
            }
            if done(&messages) {
                Ok(())
            } else {
                Err(format!("got {messages:?}"))
            }
        });
    };
    receive_until("READY=1", &|m| m.iter().any(|m| m.starts_with("READY=1\n")));
    receive_until("three watchdog pings", &|m| {
        m.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
    });
    assert!(bridge.is_ready());
    assert!(bridge.terminate().success());
    receive_until("STOPPING=1", &|m| {
        m.iter().any(|m| m.starts_with("STOPPING=1"))
    });
}

#[test]
fn the_overlay_in_the_docs_replaces_config_secrets_and_image() {
    let docs = std::fs::read_to_string(Path::new(ROOT).join("docs/deploy.md")).unwrap();
    let start = docs
        .find("cat > kustomization.yaml <<'EOF'\n")
        .expect("docs/deploy.md shows an overlay");
    let body = &docs[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let overlay = &body[..body.find("\nEOF\n").unwrap() + 1];
    let dir = tempfile::tempdir().unwrap();
    // kustomize takes only relative paths: climb to / and down to the base.
    let climb = "../".repeat(dir.path().components().count() - 1);
    let base = deploy("kubernetes");
    let base = format!("{climb}{}", base.to_str().unwrap().trim_start_matches('/'));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        overlay.replace("../deploy/kubernetes", &base),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[fishjam]\nid = \"overlay-id\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("management-token"), "token-from-overlay").unwrap();
    std::fs::write(dir.path().join("webhook-secret"), "secret-from-overlay").unwrap();
    let output = succeed(
        Command::new(tool("kubectl"))
            .arg("kustomize")
            .arg(dir.path()),
    );
    let rendered = String::from_utf8(output.stdout).unwrap();
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode("token-from-overlay");
    assert!(rendered.contains(&encoded), "{rendered}");
    assert!(rendered.contains("overlay-id"), "{rendered}");
    assert!(
        !rendered.contains("replace-with-the-management-token"),
        "{rendered}"
    );
    assert!(rendered.contains("image: registry.example.com/fishjam-bridge:0.1.0"));
    assert!(rendered.contains("namespace: fishjam"));
}
