"""CONFIG templates and destinations, for the tests of configuration, files and signals."""

import os

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


def make_template_in(tmp_path, name, text):
    """make_template in tmp_path/configmaps, where config_env points."""
    directory = tmp_path / "configmaps" / name
    directory.mkdir(parents=True)
    (directory / name).write_text(text)


def config_env(tmp_path, destination):
    return {"DEPENDENCY_CONFIG": str(destination), "INTERFACE_NAME": "lo",
            "ENTRYPOINT_CONFIGMAPS_DIR": str(tmp_path / "configmaps"),
            "ENTRYPOINT_SERVICEACCOUNT_DIR": str(tmp_path / "sa")}


def rendered(tmp_path, text, old=None):
    """A CONFIG dependency for tmp_path/etc/x.conf as the module parses it, so its content has the
    module's own type (str or bytes); `old`: bytes the destination holds before."""
    make_template_in(tmp_path, "x.conf", text)
    (tmp_path / "etc").mkdir()
    env = config_env(tmp_path, tmp_path / "etc" / "x.conf")
    [dep] = ke.parse_dependencies(env, ke.read_settings(env))
    if old is not None:
        (tmp_path / "etc" / "x.conf").write_bytes(old)
    return dep


def left_in(directory):
    return sorted(os.listdir(str(directory)))
