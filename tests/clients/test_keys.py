import os
import stat

import pytest
import zmq
import zmq.auth

from learnd.clients.cli import main as cli_main
from learnd.clients.keys import KeyFileError, create_keypair, load_allowlist, load_public, load_secret


def test_learnd_keys_lays_out_pairs_that_load_and_keeps_secrets_private(tmp_path, capsys):
    old = os.umask(0o000)      # even a permissive umask must not widen a secret
    try:
        assert cli_main(["keys", str(tmp_path), "--server", "--client", "p1", "--control", "admin"]) == 0
    finally:
        os.umask(old)
    for sub, name in (("server", "server"), ("clients", "p1"), ("control-clients", "admin")):
        secret = tmp_path / sub / f"{name}.key_secret"
        public = tmp_path / sub / f"{name}.key"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(public.stat().st_mode) == 0o644
        pub, sec = load_secret(str(secret))
        assert load_public(str(public)) == pub and zmq.curve_public(sec) == pub
        # pyzmq's own reader takes them too: any ZeroMQ program can use these files.
        assert zmq.auth.load_certificate(str(secret)) == (pub, sec)
    assert set(load_allowlist(str(tmp_path / "clients"))) == {load_public(str(tmp_path / "clients" / "p1.key"))}
    assert "server" in capsys.readouterr().out


def test_a_pair_is_never_overwritten_and_names_are_checked(tmp_path):
    create_keypair(str(tmp_path), "a")
    before = (tmp_path / "a.key_secret").read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        create_keypair(str(tmp_path), "a")
    assert (tmp_path / "a.key_secret").read_bytes() == before
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(KeyFileError):
            create_keypair(str(tmp_path), bad)
    assert cli_main(["keys", str(tmp_path)]) == 2      # nothing asked for


def test_bad_key_files_are_refused_with_a_reason(tmp_path):
    public, secret = create_keypair(str(tmp_path), "k")
    with pytest.raises(KeyFileError, match="no secret key"):
        load_secret(public)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_secret(str(tmp_path / "missing.key_secret"))
    short = tmp_path / "short.key"
    short.write_text('curve\n    public-key = "abc"\n')
    with pytest.raises(KeyFileError, match="not a CURVE certificate"):
        load_public(str(short))
    with pytest.raises(KeyFileError, match="not a directory"):
        load_allowlist(str(tmp_path / "nowhere"))
    # A public key may be given as its 40 Z85 characters instead of a file.
    key = load_public(public)
    assert load_public(key.decode()) == key
