// Structured logging. Prompts, images, bodies and credentials are customer data: they are never logged at
// info, and the redact list below blanks credentials even if a header map is logged at
// debug by mistake.
import pino from 'pino';

export type Logger = pino.Logger;

export const REDACT_PATHS = [
  'headers["api-key"]',
  'headers.authorization',
  'headers["ocp-apim-subscription-key"]',
  'headers.cookie',
  '*.headers["api-key"]',
  '*.headers.authorization',
  '*.headers["ocp-apim-subscription-key"]',
  '*.headers.cookie',
  // Envoy's HeaderMap (a request_headers / trailers message logged whole) is a list of {key, raw_value}:
  // every value is blanked, since which entry holds a credential is only known by its key.
  'headers.headers[*].raw_value',
  'headers.headers[*].value',
  '*.headers.headers[*].raw_value',
  '*.headers.headers[*].value',
  '*.trailers.headers[*].raw_value',
  '*.trailers.headers[*].value',
  'apiKey',
  '*.apiKey',
  'body',
  '*.body',
  'prompt',
  '*.prompt',
];

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'azure-image-extproc' },
      // "level":"info" rather than pino's 30: readable as is, and what log pipelines match on.
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination ?? pino.destination({ sync: false }),
  );
}
