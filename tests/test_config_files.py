"""DEPENDENCY_CONFIG: templates from the ConfigMap directory rendered with this pod's address."""

import os
import socket
import threading

import pytest

import kubernetes_entrypoint as ke


def make_template(configmaps, name, text):
    directory = configmaps / name
    directory.mkdir(parents=True)
    (directory / name).write_text(text)


def config_deps(tmp_path, destinations, interface="lo"):
    env = {"DEPENDENCY_CONFIG": destinations, "INTERFACE_NAME": interface,
           "ENTRYPOINT_CONFIGMAPS_DIR": str(tmp_path / "configmaps"),
           "ENTRYPOINT_SERVICEACCOUNT_DIR": str(tmp_path / "sa")}
    return ke.parse_dependencies(env, ke.read_settings(env))


def test_render_for_loopback(tmp_path):
    make_template(tmp_path / "configmaps", "nova.conf",
                  "my_ip = {{ .IP }}\nhost={{.HOSTNAME}}\nerl = {{   .IP_ERLANG   }}\n$HOME stays\n")
    destination = tmp_path / "etc" / "nova" / "nova.conf"
    [dep] = config_deps(tmp_path, str(destination))
    assert dep.label == "Config %s" % destination and not dep.needs_api
    assert ke.check_config(dep, None).met
    assert destination.read_text() == ("my_ip = 127.0.0.1\nhost=%s\nerl = 127,0,0,1\n$HOME stays\n"
                                       % socket.gethostname())
    assert oct(destination.stat().st_mode & 0o777) == oct(0o644)


def test_existing_mode_is_kept(tmp_path):
    make_template(tmp_path / "configmaps", "app.conf", "ip={{ .IP }}\n")
    destination = tmp_path / "app.conf"
    destination.write_text("old")
    destination.chmod(0o600)
    [dep] = config_deps(tmp_path, str(destination))
    assert ke.check_config(dep, None).met
    assert destination.read_text() == "ip=127.0.0.1\n"
    assert destination.stat().st_mode & 0o777 == 0o600
    assert [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")] == []


def test_unknown_placeholder_is_an_error_naming_it(tmp_path):
    make_template(tmp_path / "configmaps", "x.conf", "a\nb = {{ .FOO }}\n")
    with pytest.raises(ke.ConfigError) as caught:
        config_deps(tmp_path, str(tmp_path / "x.conf"))
    assert caught.value.variable == "DEPENDENCY_CONFIG"
    assert "{{ .FOO }}" in str(caught.value) and "line 2" in str(caught.value)


def test_placeholders_are_case_sensitive_like_go(tmp_path):
    make_template(tmp_path / "configmaps", "x.conf", "{{ .ip }}")
    with pytest.raises(ke.ConfigError):
        config_deps(tmp_path, str(tmp_path / "x.conf"))


def test_missing_template_is_an_error(tmp_path):
    with pytest.raises(ke.ConfigError) as caught:
        config_deps(tmp_path, "/etc/none.conf")
    assert caught.value.variable == "DEPENDENCY_CONFIG" and "none.conf/none.conf" in str(caught.value)


@pytest.mark.parametrize("interface, problem", [("", "not set"), ("nosuch0", "no network interface")])
def test_interface_name_missing_or_wrong(tmp_path, interface, problem):
    make_template(tmp_path / "configmaps", "x.conf", "{{ .IP }}")
    with pytest.raises(ke.ConfigError) as caught:
        config_deps(tmp_path, str(tmp_path / "x.conf"), interface)
    assert caught.value.variable == "INTERFACE_NAME" and problem in str(caught.value)


IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 80     eth0
20010db8000000000000000000000042 02 40 00 80     eth0
20010db80000000000000000000000aa 03 40 00 80     eth1
"""


def test_ipv6_global_address_from_sample_data():
    hex_address = ke.ipv6_global_address(IF_INET6, "eth0")
    assert hex_address == "20010db8000000000000000000000042"
    assert ke.ipv6_forms(hex_address) == ("2001:db8::42", "8193,3512,0,0,0,0,0,66")
    assert ke.ipv6_global_address(IF_INET6, "lo") is None  # host scope only
    assert ke.ipv6_global_address(IF_INET6, "eth9") is None


def test_unwritable_destination_is_not_met_and_retried(tmp_path):
    make_template(tmp_path / "configmaps", "x.conf", "{{ .IP }}")
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a directory should be")
    [dep] = config_deps(tmp_path, str(blocker / "x.conf"))
    verdict = ke.check_config(dep, None)
    assert not verdict.met and verdict.reason.startswith("cannot write")
    blocker.unlink()
    assert ke.check_config(dep, None).met


def test_concurrent_reader_never_sees_half_a_file(tmp_path):
    big = "line {{ .IP }}\n" * 20000
    make_template(tmp_path / "configmaps", "big.conf", big)
    destination = tmp_path / "big.conf"
    [dep] = config_deps(tmp_path, str(destination))
    assert ke.check_config(dep, None).met
    whole = destination.read_text()
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(destination.read_text() == whole)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(30):
            assert ke.check_config(dep, None).met
    finally:
        stop.set()
        thread.join()
    assert seen and all(seen)


def test_placeholder_error_is_one_line(tmp_path):
    make_template(tmp_path / "configmaps", "x.conf", "x {{ .IP }\nmore }}\n")
    with pytest.raises(ke.ConfigError) as caught:
        config_deps(tmp_path, str(tmp_path / "x.conf"))
    assert "\n" not in str(caught.value)


def test_template_that_is_not_utf8_is_copied_as_bytes(tmp_path):
    """As the original does: bytes that are not UTF-8 and line ends pass through untouched."""
    make_template(tmp_path / "configmaps", "x.conf", "")
    (tmp_path / "configmaps" / "x.conf" / "x.conf").write_bytes(b"x \xff {{ .IP }}\r\n\r")
    [dep] = config_deps(tmp_path, str(tmp_path / "x.conf"))
    assert dep.content == b"x \xff 127.0.0.1\r\n\r"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop to another user")
def test_single_file_in_read_only_directory_is_written_in_place(tmp_path):
    """A file mounted alone into a directory this user cannot write: no temporary file beside it."""
    import shutil
    import tempfile
    make_template(tmp_path / "configmaps", "x.conf", "ip={{ .IP }}\n")
    [dep] = config_deps(tmp_path, "/somewhere/x.conf")
    directory = tempfile.mkdtemp()
    try:
        destination = os.path.join(directory, "x.conf")
        with open(destination, "w") as f:
            f.write("old")
        os.chmod(destination, 0o666)
        os.chmod(directory, 0o555)
        dep.path = destination
        pid = os.fork()
        if pid == 0:
            try:
                os.setuid(65534)
                os._exit(0 if ke.check_config(dep, None).met else 1)
            except BaseException:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        with open(destination) as f:
            assert f.read() == "ip=127.0.0.1\n"
    finally:
        os.chmod(directory, 0o755)
        shutil.rmtree(directory)
