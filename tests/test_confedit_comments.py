"""A console save of an lvs.cf (lb.config.store, the one edit path of lb.confedit) keeps the
operator's comments, each before the line it was before, as Piranha's console did (lvsMergeConfig
rewrote only the values); the saved file still reads back as the edit made it."""
from __future__ import annotations

from lb.config import lvscf, store

CF = """\
# production director, ticket 1234
# (two lines of header)
serial_no = 1
# DR: the real servers hold the VIP on lo
network = direct

virtual server web {
     # the public VIP
     address = 198.18.0.10 eth0:1
     active = 1
     port = 80
     # ssh, not rsh
     send = "GET / HTTP/1.0\\r\\n\\r\\n"
     expect = "HTTP"
     # web1 is the big box
     server web1 {
         address = 198.18.1.11
         active = 1
         # raised for the migration
         weight = 2
         # end of web1
     }
     # web2 leaves next week
     server web2 {
         address = 198.18.1.12
         active = 1
         weight = 1
     }
}
# trailer
"""


def test_a_console_save_keeps_the_comments_of_an_lvscf(tmp_path):
    cf = tmp_path / "lvs.cf"
    cf.write_text(CF)
    snap = store.read(cf)
    doc = snap.document()
    vs = doc["virtual_server"][0]
    vs["real_server"][0]["weight"] = 3
    del vs["real_server"][1]                       # web2 and its comment go
    vs["monitor"].pop("send")                      # a key gone: its comment stays in the block
    new = store.prepare(snap, doc)
    store.write(snap, new.data)
    text = cf.read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:3] == ["# production director, ticket 1234", "# (two lines of header)", "serial_no = 2"]
    assert lines[lines.index("network = direct") - 1] == "# DR: the real servers hold the VIP on lo"
    assert lines[lines.index("address = 198.18.0.10 eth0:1") - 1] == "# the public VIP"
    assert lines[lines.index("server web1 {") - 1] == "# web1 is the big box"
    assert lines[lines.index("weight = 3") - 1] == "# raised for the migration"
    assert lines[-1] == "# trailer"
    assert "# web2 leaves next week" not in text and "server web2" not in text
    assert "# ssh, not rsh" in text and "# end of web1" in text
    # what was saved is what the edit made (the comments change nothing)
    assert lvscf.load(cf).virtual_servers == new.cfg.virtual_servers


def test_a_file_without_comments_is_written_as_dumps_writes_it():
    text = lvscf.dumps(lvscf.loads(CF))
    assert lvscf.keep_comments(text, text) == text


TOML = """\
# site: dc1, owner: netops

[global]
instance = "default"
public_interface = "eth0"   # the uplink
network = "direct"

# the web farm
[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
scheduler = "wlc"  # wlc since 2019
send_note = '''
# not a comment: inside a string
'''

  # big box
  [[virtual_server.real_server]]
  name = "web1"
  address = "198.18.1.11"
  weight = 3   # 3x capacity

  [[virtual_server.real_server]]
  name = "web2"
  address = "198.18.1.12"
  # halve during the migration
  weight = 1

# dns, going away
[[virtual_server]]
name = "dns"
address = "198.18.0.11"
port = 53
protocol = "udp"
# end
"""


def test_a_console_save_keeps_the_comments_of_a_toml_file(tmp_path):
    f = tmp_path / "lb.toml"
    f.write_text(TOML.replace("send_note = '''\n# not a comment: inside a string\n'''\n", ""))
    for serial in (1, 2):   # the second save finds lb's own header: it is not kept twice
        snap = store.read(f)
        doc = snap.document()
        if serial == 1:
            reals = doc["virtual_server"][0]["real_server"]
            reals.reverse()                         # by name, not by place
            reals[1]["weight"] = 5                  # web1
            del doc["virtual_server"][1]            # dns and its comment go
        store.write(snap, store.prepare(snap, doc).data)
    text = f.read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0].startswith("# Written by lb (serial_no 2)") and sum(
        line.startswith("# Written by lb") for line in lines) == 1
    assert lines.index("# site: dc1, owner: netops") < lines.index("[global]")
    assert 'public_interface = "eth0"  # the uplink' in lines
    assert lines[lines.index("[[virtual_server]]") - 1] == "# the web farm"
    assert 'scheduler = "wlc"  # wlc since 2019' in lines
    web1 = lines.index('name = "web1"')
    assert lines[web1 - 2] == "# big box" and "weight = 5  # 3x capacity" in lines[web1:]
    assert lines[lines.index("weight = 1") - 1] == "# halve during the migration"
    assert "# dns, going away" not in text and lines[-1] == "# end"
    # the comments change nothing: the file is what the edit made
    assert store.read(f).cfg.virtual_servers[0].real_servers[0].name == "web2"


def test_toml_comments_are_never_put_where_they_change_the_file():
    from lb.config import totoml
    new = '[global]\nx = 1\n'
    # a "comment" inside a multi-line string of the old file is the string's text: never moved
    old = "[global]\nx = '''\n# text\n'''\n"
    assert totoml.keep_comments(old, new) == new
    assert totoml.keep_comments("# a\n[global]\nx = 2 # b\n", new) == '# a\n\n[global]\nx = 1  # b\n'
