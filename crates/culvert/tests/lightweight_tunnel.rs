//! lightweight-tunnel's users bring their command lines and JSON files: each README example
//! runs as written (a strong key in place of the README's weak ones, which are refused),
//! through real TUN devices across namespaces.
//!
//! ```text
//!   host 0: server 10.0.0.1   198.18.1.2 --+
//!   host 1: client 10.0.0.2   198.18.2.2 --+-- router
//!   host 2: client 10.0.0.3   198.18.3.2 --+
//! ```

mod common;

use std::time::Duration;

use common::*;

/// A key strong enough for culvert (lightweight-tunnel's README examples are not).
const STRONG: &str = "Qm9yZWFsLXN0cm9uZy1rZXktNDI";

/// Runs culvert to completion in host `host`'s namespace: (exit code, stdout + stderr).
fn culvert_in(lab: &Lab, host: usize, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns(host), BIN])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// lightweight-tunnel's README, "quick start" and "P2P": a server and two clients with `-p2p`,
/// plus its tuning flags (`-fec-data 10 -fec-parity 5`, `-mtu 1200`, `-send-queue 5000
/// -recv-queue 5000`). The README's own weak key is refused with a message naming
/// `--allow-weak-key`; with a strong key the three meet, the tuning flags take effect, and
/// the ones culvert has no use for are noted in the log.
#[test]
fn its_readme_command_lines_build_the_network() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("ltcli", 3) else {
        return;
    };
    let (code, said) = culvert_in(
        &lab,
        0,
        &[
            "-m",
            "server",
            "-l",
            "0.0.0.0:9000",
            "-t",
            "10.0.0.1/24",
            "-k",
            "your-secret-key",
        ],
    );
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("--allow-weak-key"), "{said}");
    assert!(
        lab.sh(Some(0), "ip link show culvert0 2>&1 || true")
            .unwrap()
            .contains("does not exist"),
        "a refused start changes nothing"
    );
    let server = lab
        .spawn(
            0,
            &[
                "-m",
                "server",
                "-l",
                "0.0.0.0:9000",
                "-t",
                "10.0.0.1/24",
                "-k",
                STRONG,
                "-send-queue",
                "5000",
                "-recv-queue",
                "5000",
            ],
        )
        .unwrap();
    let a = lab
        .spawn(
            1,
            &[
                "-m",
                "client",
                "-r",
                "198.18.1.2:9000",
                "-t",
                "10.0.0.2/24",
                "-p2p",
                "-k",
                STRONG,
                "-fec-data",
                "10",
                "-fec-parity",
                "5",
                "-mtu",
                "1200",
            ],
        )
        .unwrap();
    let _b = lab
        .spawn(
            2,
            &[
                "-m",
                "client",
                "-r",
                "198.18.1.2:9000",
                "-t",
                "10.0.0.3/24",
                "-p2p",
                "-k",
                STRONG,
            ],
        )
        .unwrap();
    wait_ping(&lab, 1, overlay(0));
    wait_ping(&lab, 2, overlay(0));
    wait_ping(&lab, 1, overlay(2));
    let log = lab.log(server);
    for note in [
        "-send-queue 5000: culvert keeps no packet queue",
        "-recv-queue 5000:",
    ] {
        assert!(
            log.contains(note),
            "no note {note:?} in the server's log:\n{log}"
        );
    }
    assert!(
        lab.log(a).contains("-fec-data, -fec-parity: fixed FEC"),
        "{}",
        lab.log(a)
    );
    let link = lab.sh(Some(1), "ip link show culvert0").unwrap();
    assert!(link.contains("mtu 1200"), "{link}");
    let s = lab.status(1).unwrap();
    let fec = &s["peers"][0]["fec"];
    assert_eq!(
        (fec["k"].as_u64(), fec["m"].as_u64()),
        (Some(10), Some(5)),
        "{s}"
    );
    assert!(fec["parity_shards"].as_u64() > Some(0), "{s}");
}

/// lightweight-tunnel's README, "multi-client options": `-multi-client=false` admits one
/// client and refuses the next; its full server JSON example with `-client-isolation` beside
/// `-c` lets both clients reach the server but not each other, and every key of the file
/// culvert has no use for is noted.
#[test]
fn its_single_client_and_isolation_modes_hold() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("ltiso", 3) else {
        return;
    };
    let client = |lab: &mut Lab, host: usize| {
        let addr = format!("10.0.0.{}/24", host + 1);
        lab.spawn(
            host,
            &[
                "-m",
                "client",
                "-r",
                "198.18.1.2:9000",
                "-t",
                &addr,
                "-k",
                STRONG,
            ],
        )
        .unwrap()
    };
    let server = lab
        .spawn(
            0,
            &[
                "-m",
                "server",
                "-l",
                "0.0.0.0:9000",
                "-t",
                "10.0.0.1/24",
                "-k",
                STRONG,
                "-multi-client=false",
            ],
        )
        .unwrap();
    let a = client(&mut lab, 1);
    wait_ping(&lab, 1, overlay(0));
    let b = client(&mut lab, 2);
    assert!(
        wait_log(&lab, b, 15, |l| l.contains("the server is full")),
        "{}",
        lab.log(b)
    );
    assert!(lab.ping(2, overlay(0), Duration::from_secs(2)).is_none());
    for id in [b, a, server] {
        lab.stop(id, false);
    }

    let file = lab.dir().join("config.json");
    std::fs::write(
        &file,
        format!(
            r#"{{
  "mode": "server",
  "local_addr": "0.0.0.0:9000",
  "tunnel_addr": "10.0.0.1/24",
  "key": "{STRONG}",
  "mtu": 1400,
  "fec_data": 10,
  "fec_parity": 3,
  "timeout": 30,
  "keepalive": 10,
  "send_queue_size": 1000,
  "recv_queue_size": 1000,
  "multi_client": true,
  "max_clients": 100,
  "client_isolation": false
}}"#
        ),
    )
    .unwrap();
    let server = lab
        .spawn(0, &["-c", &file.display().to_string(), "-client-isolation"])
        .unwrap();
    let _a = client(&mut lab, 1);
    let _b = client(&mut lab, 2);
    wait_ping(&lab, 1, overlay(0));
    wait_ping(&lab, 2, overlay(0));
    assert!(
        lab.ping(1, overlay(2), Duration::from_secs(3)).is_none(),
        "isolated clients reached each other"
    );
    let log = lab.log(server);
    for key in [
        "-client-isolation and the other flags beside -c override",
        "\"mtu\": 1400",
        "fec_data in",
        "\"timeout\": 30",
        "\"send_queue_size\": 1000",
        "\"recv_queue_size\": 1000",
    ] {
        assert!(log.contains(key), "no note for {key} in:\n{log}");
    }
}

/// lightweight-tunnel's README, "configuration files": `-g config.json` writes a server and a
/// client file (0600, one new key); after the operator puts the server's address in the
/// client's, `-c config.json` and `-c config.json.client` meet, and so does a client run from
/// the README's full client example (every key, the generated key in place of its weak one).
#[test]
fn its_generated_and_readme_files_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("ltgen", 3) else {
        return;
    };
    let dir = lab.dir().to_owned();
    let server_file = dir.join("config.json");
    let client_file = dir.join("config.json.client");
    let (code, said) = culvert_in(&lab, 0, &["-g", &server_file.display().to_string()]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("config.json.client"), "{said}");
    let (code, said) = culvert_in(&lab, 1, &["-c", &client_file.display().to_string()]);
    assert_eq!(code, 2, "the placeholder address is refused: {said}");
    assert!(said.contains("placeholder"), "{said}");
    let client_text = std::fs::read_to_string(&client_file).unwrap();
    std::fs::write(
        &client_file,
        client_text.replace("SERVER_IP:9000", "198.18.1.2:9000"),
    )
    .unwrap();
    let key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&server_file).unwrap()).unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let readme_client = dir.join("client.json");
    std::fs::write(
        &readme_client,
        format!(
            r#"{{
  "mode": "client",
  "remote_addr": "198.18.1.2:9000",
  "tunnel_addr": "10.0.0.3/24",
  "key": "{key}",
  "mtu": 1400,
  "fec_data": 10,
  "fec_parity": 3,
  "timeout": 30,
  "keepalive": 10,
  "send_queue_size": 1000,
  "recv_queue_size": 1000,
  "p2p_enabled": true,
  "p2p_port": 0,
  "enable_mesh_routing": true,
  "max_hops": 3,
  "route_update_interval": 30
}}"#
        ),
    )
    .unwrap();
    let server = lab
        .spawn(0, &["-c", &server_file.display().to_string()])
        .unwrap();
    let _a = lab
        .spawn(1, &["-c", &client_file.display().to_string()])
        .unwrap();
    let b = lab
        .spawn(2, &["-c", &readme_client.display().to_string()])
        .unwrap();
    wait_ping(&lab, 1, overlay(0));
    wait_ping(&lab, 2, overlay(0));
    wait_ping(&lab, 1, overlay(2));
    let noted = format!(" in {}:", server_file.display());
    assert!(
        !lab.log(server).contains(&noted),
        "the generated file needs no notes:\n{}",
        lab.log(server)
    );
    let log = lab.log(b);
    for key in [
        "\"mtu\": 1400",
        "fec_data in",
        "\"timeout\": 30",
        "\"send_queue_size\": 1000",
        "\"recv_queue_size\": 1000",
        "\"route_update_interval\": 30",
    ] {
        assert!(log.contains(key), "no note for {key} in:\n{log}");
    }
}

/// `-tls` (lightweight-tunnel's old TLS mode) is refused with the reason; `-v` prints the
/// version. Neither touches the system.
#[test]
fn its_tls_flags_are_refused_with_the_reason() {
    for tls in [
        &[
            "-m",
            "server",
            "-tls",
            "-tls-cert",
            "c.pem",
            "-tls-key",
            "k.pem",
        ][..],
        &["-m", "client", "-tls-skip-verify"][..],
    ] {
        let out = std::process::Command::new(BIN).args(tls).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains("no TLS mode"), "{said}");
    }
    let out = std::process::Command::new(BIN).arg("-v").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("culvert "));
}
