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
