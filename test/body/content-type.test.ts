import { describe, expect, test } from 'vitest';
import { classifyBody } from '../../src/body/content-type.js';
import { parseBoundary } from '../../src/body/multipart.js';

describe('classifyBody', () => {
  test.each([
    ['application/json', { kind: 'json' }],
    ['Application/JSON', { kind: 'json' }],
    ['application/json; charset=utf-8', { kind: 'json' }],
    [' application/json ;charset="utf-8"', { kind: 'json' }],
    ['application/json; broken="', { kind: 'json' }],
    ['multipart/form-data; boundary=abc', { kind: 'multipart', boundary: 'abc' }],
    ['Multipart/Form-Data; charset=utf-8; boundary="----x y"', { kind: 'multipart', boundary: '----x y' }],
    ['multipart/form-data', { kind: 'other' }],
    ['multipart/form-data; boundary=', { kind: 'other' }],
    ['multipart/mixed; boundary=abc', { kind: 'other' }],
    ['application/merge-patch+json', { kind: 'other' }],
    ['application/jsonl', { kind: 'other' }],
    ['text/json', { kind: 'other' }],
    ['application/x-www-form-urlencoded', { kind: 'other' }],
    ['', { kind: 'other' }],
    [undefined, { kind: 'other' }],
  ])('%j', (contentType, expected) => {
    expect(classifyBody(contentType)).toEqual(expected);
  });
});

describe('parseBoundary', () => {
  test.each([
    ['multipart/form-data; boundary=abc', 'abc'],
    ['multipart/form-data;boundary=abc', 'abc'],
    ['multipart/form-data; BOUNDARY=abc', 'abc'],
    ['multipart/form-data; Boundary = abc ; charset=utf-8', 'abc'],
    ['multipart/form-data; boundary="quoted value"', 'quoted value'],
    ['multipart/form-data; boundary="a\\"b"', null], // '"' is not a bchar
    ["multipart/form-data; boundary=\"'()+_,-./:=?\"", "'()+_,-./:=?"],
    ['multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW', '----WebKitFormBoundary7MA4YWxkTrZu0gW'],
    ['multipart/form-data; boundary=' + 'b'.repeat(70), 'b'.repeat(70)],
    ['multipart/form-data; boundary=' + 'b'.repeat(71), null],
    ['multipart/form-data; boundary=""', null],
    ['multipart/form-data; boundary="ends in space "', null],
    ['multipart/form-data; boundary=two words', null],
    ['multipart/form-data; boundary="unterminated', null],
    ['multipart/form-data; boundary=a; boundary=b', null],
    ['multipart/form-data; boundary=a; boundary="a"', 'a'],
    ['multipart/form-data; boundary=caf\u00e9', null],
    ['multipart/form-data; xboundary=abc', null],
    ['multipart/form-data', null],
  ])('%j -> %j', (contentType, expected) => {
    expect(parseBoundary(contentType)).toBe(expected);
  });
});
