# An independent reader for the peer test: Python's email package parses
# each MIME file named on stdin and prints one JSON line with what a mail
# reader shows: subject, from, to, message-id, date, the plain and HTML text,
# and every other leaf part as name -> sha256 of its decoded bytes.
import hashlib
import json
import sys
from email import policy
from email.parser import BytesParser


def utf8(s):
    # Raw UTF-8 header bytes (RFC 6532) come out of the parser as surrogate escapes.
    return s.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace') if s is not None else None


def text_of(part):
    data = part.get_payload(decode=True) or b''
    return data.decode(part.get_content_charset() or 'utf-8', 'replace').replace('\r\n', '\n')


def read(path):
    with open(path, 'rb') as f:
        msg = BytesParser(policy=policy.default).parse(f)
    body = msg.get_body(('plain',))
    html = msg.get_body(('html',))
    files = {}
    inside = set()
    for part in msg.walk():
        if id(part) in inside:
            continue
        if part.get_content_type() == 'message/rfc822':
            # A forwarded message: Python parses it, so compare what a reader shows of it.
            inner = part.get_payload(0)
            for p in inner.walk():
                inside.add(id(p))
            subject = str(inner['subject']) if inner['subject'] is not None else ''
            files[utf8(part.get_filename() or '')] = 'message: ' + utf8(subject)
            continue
        if part.is_multipart() or part is body or part is html:
            continue
        files[utf8(part.get_filename() or '')] = hashlib.sha256(part.get_payload(decode=True) or b'').hexdigest()
    addr = lambda h: [utf8(a.addr_spec) for a in msg[h].addresses] if msg[h] is not None else []
    return {
        'subject': utf8(str(msg['subject'])) if msg['subject'] is not None else None,
        'from': addr('from'),
        'to': addr('to'),
        'message_id': str(msg['message-id']).strip() if msg['message-id'] is not None else None,
        'date': str(msg['date']) if msg['date'] is not None else None,
        'body': text_of(body) if body is not None else None,
        'html': text_of(html) if html is not None else None,
        'files': files,
        'defects': [type(d).__name__ for d in msg.defects],
    }


for line in sys.stdin:
    print(json.dumps(read(line.strip())), flush=True)
