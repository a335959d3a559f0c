# A fake keyward socket, for the tests of the clients' check of who serves
# the socket (the CLI's and the Rust client's, testkit/src/fake_listener.rs;
# the Python client's, clients/python/tests/test_trust.py): run as another
# uid, it accepts connections at PATH (replacing what is there) one after
# the other, reads each until the client closes it or 3 s of silence, and
# once no new connection came for 2 s (30 s for the first) writes the number
# of bytes received in all to OUT (and OUT.ready once it listens). A
# client's probe is one connection; grpc's, when it gets that far, another.
#
# python3 fake_listener.py PATH OUT
import os, socket, sys
path, out = sys.argv[1], sys.argv[2]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
open(out + ".ready", "w").close()
s.settimeout(30)
total = 0
try:
    while True:
        c, _ = s.accept()
        s.settimeout(2)
        c.settimeout(3)
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                total += len(b)
        except socket.timeout:
            pass
        c.close()
except socket.timeout:
    pass
with open(out, "w") as f:
    f.write(str(total))
