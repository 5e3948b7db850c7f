export type { EditFailure, EditOutcome, FieldRule, FieldRules, MemberAction, MultipartPart, StreamEditor, TouchedField, TouchedName, WholeEditOptions } from './types.js';
export { editJson, createJsonEditor } from './json.js';
export { parseBoundary, editMultipart, createMultipartEditor, listMultipartParts } from './multipart.js';
export { classifyBody, type BodyKind } from './content-type.js';
export { DEFAULT_MAX_HELD_BYTES, editInChunks } from './editor.js';
