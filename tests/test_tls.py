"""TLS as client-go does it, on every Python from 3.8 to 3.13: certificates real clusters serve are
accepted even where OpenSSL's strict rules (on by default from Python 3.13) would refuse them, and
everything client-go refuses is refused, with the reason in the error."""

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from certs import Authority


def serve(tmp_path, certificate, key, ca_pem):
    return k8s.FakeKubeAPI(tmp_path / "api", tls=(certificate, key, ca_pem))


ACCEPTED = {
    "CA without keyUsage": (dict(key_usage=False), {}),
    "CA without subject key identifier": (dict(subject_key_id=False), {}),
    "server certificate without authority key identifier": ({}, dict(authority_key_id=False)),
    "all three, as older clusters serve them": (dict(key_usage=False, subject_key_id=False),
                                                dict(authority_key_id=False)),
    "SAN with the IP only": ({}, dict(names=("127.0.0.1",))),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_certificates_client_go_accepts_are_accepted(tmp_path, case):
    ca_options, server_options = ACCEPTED[case]
    authority = Authority(**ca_options)
    with serve(tmp_path, *authority.issue(**server_options), authority.pem) as api:
        client = ke.ApiClient(api.url, str(api.sa_dir))
        assert client.get("/api/v1")["kind"] == "APIResourceList"


def refused(tmp_path, certificate, key, ca_pem):
    with serve(tmp_path, certificate, key, ca_pem) as api:
        client = ke.ApiClient(api.url, str(api.sa_dir))
        with pytest.raises(ke.ApiError) as caught:
            client.get("/api/v1")
        assert api.requests == []  # nothing was sent: not the token, not the request
        return str(caught.value)


def test_another_ca_is_refused(tmp_path):
    certificate, key = Authority().issue()
    reason = refused(tmp_path, certificate, key, Authority().pem)
    assert "certificate is not trusted: unable to get local issuer certificate" in reason
    assert reason.endswith("/ca.crt)")  # where the CA it was verified against is


@pytest.mark.parametrize("names", [("10.0.0.1", "example.com"), ()],
                         ids=["another name", "name only in the subject CN"])
def test_a_certificate_for_another_name_is_refused(tmp_path, names):
    authority = Authority()
    certificate, key = authority.issue(names=names, common_name="127.0.0.1")
    reason = refused(tmp_path, certificate, key, authority.pem)
    assert "not trusted" in reason and "mismatch" in reason


@pytest.mark.parametrize("valid_from, valid_until, words", [
    (-30, -1, "expired"), (1, 30, "not yet valid")])
def test_a_certificate_outside_its_validity_is_refused(tmp_path, valid_from, valid_until, words):
    authority = Authority()
    certificate, key = authority.issue(valid_from=valid_from, valid_until=valid_until)
    reason = refused(tmp_path, certificate, key, authority.pem)
    assert "not trusted" in reason and words in reason


def test_end_to_end_with_a_ca_strict_mode_refuses(tmp_path, entrypoint):
    """The process as it runs in a pod, against the certificates of an older cluster."""
    authority = Authority(key_usage=False, subject_key_id=False)
    with serve(tmp_path, *authority.issue(authority_key_id=False), authority.pem) as api:
        api.put(k8s.endpoint_slice("db"))
        entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db")).assert_execd()


def test_tls_before_1_2_is_refused_on_every_python():
    """As Go's default; 3.8 and 3.9 would leave the floor to the system's OpenSSL policy."""
    import ssl
    context = ke.tls_context(None)  # the system's CAs: any will do here
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
