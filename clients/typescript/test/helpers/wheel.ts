// A tiny pure-Python wheel (package `sandpooldemo`, VALUE = <value>), built
// here as a stored (uncompressed) zip: no build tools, no package index.

import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";

export const DEMO_WHEEL = "sandpooldemo-1.0-py3-none-any.whl";

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

/** A zip archive of `files` (name -> bytes), entries stored without compression. */
export function zip(files: [string, Buffer][]): Buffer {
  const locals: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [name, data] of files) {
    const nameBytes = Buffer.from(name, "utf8");
    const crc = crc32(data);
    // version, flags (UTF-8 names), method 0, time, date, crc, sizes, name length, extra length
    const common = Buffer.concat([u16(0x0800), u16(0), u16(0), u16(0x21), u32(crc), u32(data.length), u32(data.length), u16(nameBytes.length), u16(0)]);
    const local = Buffer.concat([u32(0x04034b50), u16(20), common, nameBytes, data]);
    central.push(
      Buffer.concat([u32(0x02014b50), u16(20), u16(20), common, u16(0), u16(0), u16(0), u32(0), u32(offset), nameBytes]),
    );
    locals.push(local);
    offset += local.length;
  }
  const dir = Buffer.concat(central);
  const end = Buffer.concat([u32(0x06054b50), u16(0), u16(0), u16(files.length), u16(files.length), u32(dir.length), u32(offset), u16(0)]);
  return Buffer.concat([...locals, dir, end]);
}

/** The bytes of the demo wheel. */
export function demoWheel(value = 42): Buffer {
  const files: [string, Buffer][] = [
    ["sandpooldemo/__init__.py", Buffer.from(`VALUE = ${value}\n`)],
    ["sandpooldemo-1.0.dist-info/METADATA", Buffer.from("Metadata-Version: 2.1\nName: sandpooldemo\nVersion: 1.0\n")],
    [
      "sandpooldemo-1.0.dist-info/WHEEL",
      Buffer.from("Wheel-Version: 1.0\nGenerator: sandpool-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ],
  ];
  let record = "";
  for (const [name, data] of files) {
    const digest = createHash("sha256").update(data).digest("base64url");
    record += `${name},sha256=${digest},${data.length}\n`;
  }
  record += "sandpooldemo-1.0.dist-info/RECORD,,\n";
  files.push(["sandpooldemo-1.0.dist-info/RECORD", Buffer.from(record)]);
  return zip(files);
}
