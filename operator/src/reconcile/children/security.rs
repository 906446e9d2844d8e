//! TLS and the client token in the pods: `spec.tls.secretName` mounted
//! read-only into every frontend and worker, which then serve TLS and are
//! probed over HTTPS (frontends also call the workers over https and
//! trust the Secret's `ca.crt`); `spec.frontend.auth.tokenSecret` mounted
//! into the frontends as their `--auth-token-file`. Secret volumes keep the
//! pods within the `restricted` Pod Security profile.

use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource, Volume, VolumeMount};

use super::{Owner, PodParts};

/// Where the TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/coded/tls";
/// Where the token Secret's key is mounted, as the file `token`.
pub const AUTH_DIR: &str = "/etc/coded/auth";
const TLS_VOLUME: &str = "coded-tls";
const AUTH_VOLUME: &str = "coded-auth-token";

/// Mounts the TLS Secret and makes the sidecar serve TLS, probed over
/// HTTPS; `frontend` also trusts `ca.crt` and calls workers over https.
pub fn add_tls(owner: &Owner<'_>, parts: &mut PodParts, frontend: bool) {
    let Some(tls) = &owner.cis.spec.tls else {
        return;
    };
    parts
        .volumes
        .insert(0, secret_volume(TLS_VOLUME, &tls.secret_name, None));
    let sidecar = &mut parts.sidecar;
    mount(sidecar, TLS_VOLUME, TLS_DIR);
    let args = sidecar.args.get_or_insert_with(Vec::new);
    args.extend([
        "--tls-cert".to_string(),
        format!("{TLS_DIR}/tls.crt"),
        "--tls-key".to_string(),
        format!("{TLS_DIR}/tls.key"),
    ]);
    if frontend {
        args.extend([
            "--tls-ca".to_string(),
            format!("{TLS_DIR}/ca.crt"),
            "--instances-tls".to_string(),
        ]);
    }
    for probe in [
        &mut sidecar.readiness_probe,
        &mut sidecar.liveness_probe,
        &mut sidecar.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        if let Some(get) = probe.http_get.as_mut() {
            get.scheme = Some("HTTPS".to_string());
        }
    }
}

/// Mounts the token's Secret key as `AUTH_DIR/token` and passes it as
/// `--auth-token-file`.
pub fn add_auth(owner: &Owner<'_>, parts: &mut PodParts) {
    let Some(auth) = &owner.cis.spec.frontend.auth else {
        return;
    };
    let secret = &auth.token_secret;
    parts.volumes.insert(
        0,
        secret_volume(AUTH_VOLUME, &secret.name, Some(&secret.key)),
    );
    mount(&mut parts.sidecar, AUTH_VOLUME, AUTH_DIR);
    parts
        .sidecar
        .args
        .get_or_insert_with(Vec::new)
        .extend(["--auth-token-file".to_string(), format!("{AUTH_DIR}/token")]);
}

/// A Secret volume; with `key`, only that key, as the file `token`.
fn secret_volume(name: &str, secret: &str, key: Option<&str>) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: key.map(|key| {
                vec![KeyToPath {
                    key: key.to_string(),
                    path: "token".to_string(),
                    ..KeyToPath::default()
                }]
            }),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(container: &mut k8s_openapi::api::core::v1::Container, volume: &str, path: &str) {
    container.volume_mounts.get_or_insert_with(Vec::new).insert(
        0,
        VolumeMount {
            name: volume.to_string(),
            mount_path: path.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    );
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    use super::*;
    use crate::crd::{AuthSpec, SecretKeyRef, TlsSpec};
    use crate::fixtures::cis;
    use crate::reconcile::children::{Children, Settings};

    /// The pod specs of the model, parity and frontend pools.
    fn pods(c: &Children) -> Vec<(&'static str, PodSpec)> {
        let spec = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
            t.and_then(|t| t.spec.clone()).expect("pod spec")
        };
        vec![
            ("model", spec(c.model.spec.as_ref().map(|s| &s.template))),
            (
                "parity",
                spec(
                    c.parities[0]
                        .stateful_set
                        .spec
                        .as_ref()
                        .map(|s| &s.template),
                ),
            ),
            (
                "frontend",
                spec(c.frontend.spec.as_ref().map(|s| &s.template)),
            ),
        ]
    }

    fn arg_after<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
        let args = c.args.as_ref()?;
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).map(String::as_str)
    }

    fn has(c: &Container, flag: &str) -> bool {
        c.args.iter().flatten().any(|a| a == flag)
    }

    #[test]
    fn tls_mounts_the_secret_read_only_serves_it_and_probes_over_https() {
        let mut cis = cis("demo");
        cis.spec.tls = Some(TlsSpec {
            secret_name: "demo-tls".into(),
        });
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        for (role, pod) in pods(&c) {
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == TLS_VOLUME)
                .unwrap_or_else(|| panic!("{role}: TLS volume"));
            let secret = volume.secret.as_ref().expect("a Secret volume");
            assert_eq!(secret.secret_name.as_deref(), Some("demo-tls"));
            assert_eq!(secret.items, None, "{role}: every key, ca.crt too");
            let sidecar = &pod.containers[0];
            let mount = sidecar
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == TLS_VOLUME)
                .expect("mounted");
            assert_eq!(mount.mount_path, TLS_DIR);
            assert_eq!(mount.read_only, Some(true), "{role}");
            assert_eq!(
                arg_after(sidecar, "--tls-cert"),
                Some("/etc/coded/tls/tls.crt")
            );
            assert_eq!(
                arg_after(sidecar, "--tls-key"),
                Some("/etc/coded/tls/tls.key")
            );
            for probe in [
                &sidecar.readiness_probe,
                &sidecar.liveness_probe,
                &sidecar.startup_probe,
            ] {
                let get = probe.as_ref().and_then(|p| p.http_get.as_ref());
                assert_eq!(
                    get.and_then(|g| g.scheme.as_deref()),
                    Some("HTTPS"),
                    "{role}"
                );
            }
            // Still within the restricted profile.
            let sc = sidecar.security_context.as_ref().expect("security context");
            assert_eq!(sc, &crate::reconcile::children::hardened(), "{role}");
            let frontend = role == "frontend";
            assert_eq!(
                arg_after(sidecar, "--tls-ca"),
                frontend.then_some("/etc/coded/tls/ca.crt"),
                "{role}"
            );
            assert_eq!(has(sidecar, "--instances-tls"), frontend, "{role}");
        }
        assert_eq!(owner.endpoint(), "https://demo-frontend.ns1.svc:8080");
        // Prometheus scrapes the TLS workers with the Secret's CA.
        let sm = &c.service_monitor.data["spec"]["endpoints"][0];
        assert_eq!(sm["scheme"], "https");
        assert_eq!(sm["tlsConfig"]["ca"]["secret"]["name"], "demo-tls");
        assert_eq!(sm["tlsConfig"]["serverName"], "demo-model.ns1.svc");
    }

    #[test]
    fn the_token_secret_key_becomes_the_frontends_token_file() {
        let mut cis = cis("demo");
        cis.spec.frontend.auth = Some(AuthSpec {
            token_secret: SecretKeyRef {
                name: "clients".into(),
                key: "token".into(),
            },
        });
        cis.spec.frontend.auth.as_mut().unwrap().token_secret.key = "api-token".into();
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        for (role, pod) in pods(&c) {
            let sidecar = &pod.containers[0];
            let mounted = sidecar
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == AUTH_VOLUME);
            let frontend = role == "frontend";
            assert_eq!(mounted, frontend, "{role}: only frontends hold the token");
            if !frontend {
                assert!(!has(sidecar, "--auth-token-file"), "{role}");
                continue;
            }
            assert_eq!(
                arg_after(sidecar, "--auth-token-file"),
                Some("/etc/coded/auth/token")
            );
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == AUTH_VOLUME)
                .expect("volume");
            let secret = volume.secret.as_ref().expect("Secret");
            assert_eq!(secret.secret_name.as_deref(), Some("clients"));
            let items = secret.items.as_ref().expect("one key");
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].key, "api-token");
            assert_eq!(items[0].path, "token");
            let mount = sidecar
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == AUTH_VOLUME)
                .expect("mount");
            assert_eq!(mount.read_only, Some(true));
            assert_eq!(mount.mount_path, AUTH_DIR);
            // No TLS asked: plain probes.
            let get = sidecar
                .readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref());
            assert_eq!(get.and_then(|g| g.scheme.as_deref()), None);
        }
        assert_eq!(owner.endpoint(), "http://demo-frontend.ns1.svc:8080");
    }

    #[test]
    fn without_tls_or_auth_nothing_is_added() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        for (role, pod) in pods(&c) {
            let sidecar = &pod.containers[0];
            for flag in [
                "--tls-cert",
                "--tls-ca",
                "--instances-tls",
                "--auth-token-file",
            ] {
                assert!(!has(sidecar, flag), "{role}: {flag}");
            }
            assert!(
                !pod.volumes
                    .iter()
                    .flatten()
                    .any(|v| v.name == TLS_VOLUME || v.name == AUTH_VOLUME),
                "{role}"
            );
        }
        assert!(
            c.service_monitor.data["spec"]["endpoints"][0]
                .get("scheme")
                .is_none()
        );
    }
}
