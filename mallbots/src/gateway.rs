//! The gateway in front of MallBots' services: an nginx configuration, written from the one
//! list of modules, that sends each module's REST paths (`/api/stores…`, …) to the processes
//! running it (round robin; a process that refuses or fails a connection is skipped), and
//! answers `/healthz` itself; and on a second address (HTTP/2), each module's gRPC services
//! (`/storespb.StoresService/…`) to its processes' gRPC servers. Every process's reflection
//! describes all of MallBots' services, so reflection through the gateway (answered by one of
//! them) lists what the gateway serves.
//!
//! `deploy/nginx.conf` is this configuration for the local cluster's fixed ports (a test keeps
//! it up to date); [`Cluster`](crate::cluster::Cluster) writes one for the ports its processes
//! got.

use std::fmt::Write as _;
use std::path::Path;

use crate::module::Module;

/// Where a module's processes listen (`host:port` each): HTTP and gRPC.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub module: &'static Module,
    pub servers: Vec<String>,
    pub grpc_servers: Vec<String>,
}

/// An nginx configuration listening on `listen` (HTTP) and `grpc_listen` (gRPC), routing every
/// module's prefixes and services to its `upstreams`. `runtime_dir` holds the pid file, logs and
/// temporary files (`None`: nginx's defaults, as for a system-wide install). Modules without
/// processes answer 503 (REST) or `UNAVAILABLE` (gRPC).
pub fn nginx_config(listen: &str, grpc_listen: &str, upstreams: &[Upstream], runtime_dir: Option<&Path>) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "# MallBots gateway: written by `mallbots gateway-config` from the list of modules.");
    let _ = writeln!(c, "worker_processes 1;");
    if let Some(dir) = runtime_dir {
        let dir = dir.display();
        let _ = writeln!(c, "pid {dir}/nginx.pid;");
        let _ = writeln!(c, "error_log {dir}/error.log warn;");
    }
    let _ = writeln!(c, "events {{ worker_connections 1024; }}");
    let _ = writeln!(c, "http {{");
    match runtime_dir {
        Some(dir) => {
            let dir = dir.display();
            let _ = writeln!(c, "    access_log {dir}/access.log;");
            for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                let _ = writeln!(c, "    {kind}_temp_path {dir}/{kind}_temp;");
            }
        }
        None => {
            let _ = writeln!(c, "    access_log /var/log/nginx/mallbots.access.log;");
        }
    }
    // Requests and answers are small JSON: stream them, never spool them to disk.
    let _ = writeln!(c, "    proxy_buffering off;");
    let _ = writeln!(c, "    proxy_request_buffering off;");
    let _ = writeln!(c, "    proxy_http_version 1.1;");
    // Keep-alive connections to the processes, except for a WebSocket (the admin's live feed),
    // whose upgrade is passed on. Its server pings within nginx's 60 s read timeout.
    let _ = writeln!(c, "    map $http_upgrade $connection_upgrade {{ default \"\"; websocket upgrade; }}");
    let _ = writeln!(c, "    proxy_set_header Upgrade $http_upgrade;");
    let _ = writeln!(c, "    proxy_set_header Connection $connection_upgrade;");
    let _ = writeln!(c, "    proxy_set_header Host $host;");
    let _ = writeln!(c, "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;");
    // A process that died or is restarting: try the module's next one (only for requests that
    // cannot have reached a handler, so a creation is never sent twice).
    let _ = writeln!(c, "    proxy_next_upstream error timeout;");
    let _ = writeln!(c, "    proxy_connect_timeout 2s;");
    for upstream in upstreams.iter().filter(|u| !u.servers.is_empty()) {
        let _ = writeln!(c, "    upstream mallbots_{} {{", upstream.module.name);
        for server in &upstream.servers {
            let _ = writeln!(c, "        server {server} max_fails=1 fail_timeout=2s;");
        }
        let _ = writeln!(c, "        keepalive 16;");
        let _ = writeln!(c, "    }}");
    }
    let _ = writeln!(c, "    server {{");
    let _ = writeln!(c, "        listen {listen};");
    let _ = writeln!(c, "        default_type application/json;");
    let _ = writeln!(c, "        location = /healthz {{ return 200 '{{\"status\":\"ok\"}}'; }}");
    for upstream in upstreams {
        for prefix in upstream.module.http_prefixes {
            if upstream.servers.is_empty() {
                let _ = writeln!(
                    c,
                    "        location {prefix} {{ return 503 '{{\"message\":\"{} is not running\"}}'; }}",
                    upstream.module.name
                );
            } else {
                let _ =
                    writeln!(c, "        location {prefix} {{ proxy_pass http://mallbots_{}; }}", upstream.module.name);
            }
        }
    }
    let _ = writeln!(c, "        location / {{ return 404 '{{\"message\":\"route not found\"}}'; }}");
    let _ = writeln!(c, "    }}");
    grpc_server(&mut c, grpc_listen, upstreams);
    let _ = writeln!(c, "}}");
    c
}

/// The gRPC half: an HTTP/2 server routing each service to its module's gRPC servers.
fn grpc_server(c: &mut String, listen: &str, upstreams: &[Upstream]) {
    for upstream in upstreams.iter().filter(|u| !u.grpc_servers.is_empty() && !u.module.grpc_services.is_empty()) {
        let _ = writeln!(c, "    upstream mallbots_{}_grpc {{", upstream.module.name);
        for server in &upstream.grpc_servers {
            let _ = writeln!(c, "        server {server} max_fails=1 fail_timeout=2s;");
        }
        let _ = writeln!(c, "        keepalive 16;");
        let _ = writeln!(c, "    }}");
    }
    let _ = writeln!(c, "    server {{");
    let _ = writeln!(c, "        listen {listen} http2;");
    let _ = writeln!(c, "        grpc_next_upstream error timeout;");
    let _ = writeln!(c, "        grpc_connect_timeout 2s;");
    let mut reflection = None;
    for upstream in upstreams {
        for service in upstream.module.grpc_services {
            if upstream.grpc_servers.is_empty() {
                // grpc-status 14: UNAVAILABLE.
                let _ = writeln!(
                    c,
                    "        location /{service}/ {{ add_header grpc-status 14; add_header grpc-message \"{} is not running\"; \
                     add_header content-type application/grpc; return 200; }}",
                    upstream.module.name
                );
            } else {
                reflection.get_or_insert(upstream.module.name);
                let _ = writeln!(
                    c,
                    "        location /{service}/ {{ grpc_pass grpc://mallbots_{}_grpc; }}",
                    upstream.module.name
                );
            }
        }
    }
    if let Some(module) = reflection {
        for version in ["v1", "v1alpha"] {
            let _ = writeln!(
                c,
                "        location /grpc.reflection.{version}.ServerReflection/ {{ grpc_pass grpc://mallbots_{module}_grpc; }}"
            );
        }
    }
    let _ = writeln!(c, "    }}");
}

/// How far a module's gRPC port is from its HTTP port in the local cluster's fixed ports.
pub const GRPC_PORT_OFFSET: u16 = 1000;

/// The local cluster's fixed ports: module number `i` of [`MODULES`](crate::module::MODULES)
/// on `first_module_port + i` (HTTP) and [`GRPC_PORT_OFFSET`] above it (gRPC).
pub fn local_upstreams(first_module_port: u16) -> Vec<Upstream> {
    crate::module::MODULES
        .iter()
        .zip(first_module_port..)
        .map(|(module, port)| Upstream {
            module,
            servers: if module.http_prefixes.is_empty() { Vec::new() } else { vec![format!("127.0.0.1:{port}")] },
            grpc_servers: if module.grpc_services.is_empty() {
                Vec::new()
            } else {
                vec![format!("127.0.0.1:{}", port + GRPC_PORT_OFFSET)]
            },
        })
        .collect()
}

/// Upstreams for containers: module `m` at host `m` (its service name), ports `port` (HTTP)
/// and `grpc_port`.
pub fn service_upstreams(port: u16, grpc_port: u16) -> Vec<Upstream> {
    crate::module::MODULES
        .iter()
        .map(|module| Upstream {
            module,
            servers: if module.http_prefixes.is_empty() { Vec::new() } else { vec![format!("{}:{port}", module.name)] },
            grpc_servers: if module.grpc_services.is_empty() {
                Vec::new()
            } else {
                vec![format!("{}:{grpc_port}", module.name)]
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_goes_to_its_module_and_the_rest_is_a_json_404() {
        let conf = nginx_config("127.0.0.1:8080", "127.0.0.1:9000", &local_upstreams(8101), None);
        assert!(conf.contains("location /api/stores { proxy_pass http://mallbots_stores; }"), "{conf}");
        assert!(conf.contains("listen 127.0.0.1:9000 http2;"), "{conf}");
        assert!(
            conf.contains("location /storespb.StoresService/ { grpc_pass grpc://mallbots_stores_grpc; }"),
            "{conf}"
        );
        assert!(conf.contains("upstream mallbots_stores_grpc {\n        server 127.0.0.1:9101 "), "{conf}");
        assert!(conf.contains("upstream mallbots_stores {\n        server 127.0.0.1:8101 "), "{conf}");
        assert!(conf.contains("location /api/admin { proxy_pass http://mallbots_admin; }"), "{conf}");
        assert!(!conf.contains("mallbots_cosec"), "cosec has no REST paths\n{conf}");
        assert!(conf.contains("location / { return 404"), "{conf}");
    }

    #[test]
    fn a_module_without_processes_answers_503() {
        let upstreams =
            vec![Upstream { module: &crate::modules::stores::MODULE, servers: vec![], grpc_servers: vec![] }];
        let conf = nginx_config("127.0.0.1:0", "127.0.0.1:1", &upstreams, Some(Path::new("/tmp/x")));
        assert!(conf.contains("location /api/stores { return 503"), "{conf}");
        assert!(conf.contains("location /storespb.StoresService/ { add_header grpc-status 14;"), "{conf}");
        assert!(conf.contains("pid /tmp/x/nginx.pid;"), "{conf}");
    }

    /// `deploy/nginx.conf` is what `mallbots gateway-config` writes for the local cluster.
    #[test]
    fn the_deployed_configuration_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.conf");
        let deployed = std::fs::read_to_string(path).unwrap_or_default();
        let current = nginx_config("127.0.0.1:8080", "127.0.0.1:9000", &local_upstreams(8101), None);
        assert!(
            deployed == current,
            "deploy/nginx.conf is stale: run `cargo run -p mallbots -- gateway-config > deploy/nginx.conf`"
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.compose.conf");
        let deployed = std::fs::read_to_string(path).unwrap_or_default();
        let current = nginx_config("0.0.0.0:8080", "0.0.0.0:9000", &service_upstreams(8080, 9000), None);
        assert!(
            deployed == current,
            "deploy/nginx.compose.conf is stale: run `cargo run -p mallbots -- gateway-config --listen 0.0.0.0:8080 \
             --grpc-listen 0.0.0.0:9000 --service-hosts > deploy/nginx.compose.conf`"
        );
    }
}
