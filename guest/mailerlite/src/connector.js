// MailerLite (connect API) export connector, in JavaScript. Vendor contract:
// docs/vendors/mailerlite.md.
//
// Contacts go in batches of 50 through `POST /batch`, one `POST api/subscribers` (an upsert by
// email) each: 201 means created, 200 updated. The upsert is non-destructive and this connector
// never sends a status, so nobody is resubscribed: a subscriber who is unsubscribed, bounced or
// junk stays so, and is reported suppressed. Every contact joins the export's group; first and
// last name go to the `name` and `last_name` fields, other mapped fields to the account's own
// fields of that key (checked when the export is saved). A mapped field a contact has no value
// for is cleared (`null`).
//
// Leave actions first read each leaver (`GET api/subscribers/{email}`) and touch only one who
// still receives mailings: `remove-from-group` (reversible: the next run adds them back when they
// rejoin) and `unsubscribe` (irreversible: MailerLite lets only the person subscribe again).
//
// The host's broker adds the credential (Bearer), keeps to the allowed host and the rate, and
// retries throttled calls; this code only builds requests and reads answers.

import { handle } from 'wasi:http/outgoing-handler@0.2.12';
import { Fields, OutgoingBody, OutgoingRequest } from 'wasi:http/types@0.2.12';

const NAME = 'MailerLite';
const MAX_BATCH = 50; // requests one batch carries
const MAX_FIELD = 255; // UNCONFIRMED: MailerLite's app caps text fields at 255 characters
const KEPT_OUT = ['unsubscribed', 'bounced', 'junk'];
const NAME_FIELDS = { 'first-name': 'name', 'last-name': 'last_name' };

export const exportDestination = {
  describe() {
    return {
      id: 'mailerlite',
      displayName: NAME,
      version: '0.1.0',
      defaultBaseUrl: 'https://connect.mailerlite.com/api',
      hosts: ['connect.mailerlite.com'],
      auth: { tag: 'bearer' },
      configFields: [
        {
          key: 'group-id',
          label: 'Group ID',
          help: 'Subscribers -> Groups -> the group; its ID is the number in the page address. Every exported contact joins it.',
          required: true,
        },
      ],
      contactFields: [
        { key: 'email', label: 'Email', required: true, maxLength: 254 },
        { key: 'first-name', label: 'First name (field name)', required: false, maxLength: MAX_FIELD },
        { key: 'last-name', label: 'Last name (field last_name)', required: false, maxLength: MAX_FIELD },
      ],
      customFields: true,
      customFieldMaxLength: MAX_FIELD,
      leaveActions: [
        {
          id: 'remove-from-group',
          label: 'Remove from the group',
          help: "Removes the contact from the export's group; they stay in the account. Reversible: the next run adds them back when they rejoin.",
          reversible: true,
          batchSize: 0,
        },
        {
          id: 'unsubscribe',
          label: 'Unsubscribe',
          help: 'Unsubscribes the contact from the account. Irreversible: MailerLite lets only the person subscribe again.',
          reversible: false,
          batchSize: 0,
        },
      ],
      maxBatchSize: MAX_BATCH,
      maxConcurrentRequests: 0,
      rateWindows: [
        // 120 requests a minute per account (docs/vendors/mailerlite.md, section 1).
        { requests: 120, seconds: 60, appliesTo: undefined },
        // A batch of only upserts is an import, 5 a minute besides (section 4); every batch
        // is counted as one, which holds the limit whatever a batch holds.
        { requests: 5, seconds: 60, appliesTo: { method: 'POST', pathPrefix: '/batch' } },
      ],
      erasure: undefined,
    };
  },

  validate(config) {
    if (config.settings.length === 0) {
      // A connection being saved: listing groups needs a valid token.
      expectOk(get(`${config.baseUrl}/groups?limit=1`));
      return;
    }
    const group = groupId(config);
    const members = get(`${config.baseUrl}/groups/${encodeURIComponent(group)}/subscribers?limit=1`);
    if (members.status === 404) {
      throw error('not-found', `group \`${group}\` was not found in the MailerLite account`, '404', false);
    }
    expectOk(members);
    const custom = customFields(config);
    if (custom.length === 0) return;
    const known = expectOk(get(`${config.baseUrl}/fields?limit=100`)).data.map((f) => f.key);
    const missing = custom.find((key) => !known.includes(key));
    if (missing !== undefined) {
      throw error('invalid-config', `the MailerLite account has no field \`${missing}\` (its fields: ${known.join(', ')})`, undefined, false);
    }
  },

  exportBatch(config, contacts) {
    const group = groupId(config);
    const custom = customFields(config);
    const report = newReport();
    const answers = batch(config, contacts.map((c) => ({
      method: 'POST',
      path: 'api/subscribers',
      body: { email: c.email, fields: fieldsOf(config, custom, c), groups: [group] },
    })));
    answers.forEach((answer, i) => {
      const status = answer.code === 201 || answer.code === 200 ? answer.body.data.status : undefined;
      if (answer.code === 201) report.created += 1;
      else if (answer.code === 200 && KEPT_OUT.includes(status)) {
        issue(report, i, 'suppressed', status, `The subscriber is ${status}: kept out, never resubscribed`);
      } else if (answer.code === 200) report.updated += 1;
      else if (answer.code === 422 && refusesGroup(answer.body)) {
        throw error('not-found', `group \`${group}\` was not found in the MailerLite account (${said(answer.body)})`, '422', false);
      } else if (answer.code === 422) issue(report, i, 'rejected', '422', said(answer.body));
      else throw vendorError(answer.code, answer.body);
    });
    return report;
  },

  eraseContacts() {
    throw error('invalid-config', 'the MailerLite connector cannot erase people yet', undefined, false);
  },

  applyLeaveAction(config, action, contacts) {
    const group = groupId(config);
    if (action !== 'remove-from-group' && action !== 'unsubscribe') {
      throw error('invalid-config', `MailerLite has no leave action \`${action}\``, undefined, false);
    }
    const report = newReport();
    const lookups = batch(config, contacts.map((c) => ({
      method: 'GET',
      path: `api/subscribers/${encodeURIComponent(c.email)}`,
    })));
    const changes = [];
    lookups.forEach((answer, i) => {
      if (answer.code === 404) return void (report.updated += 1); // gone already
      if (answer.code !== 200) throw vendorError(answer.code, answer.body);
      const subscriber = answer.body.data;
      if (KEPT_OUT.includes(subscriber.status)) {
        return issue(report, i, 'suppressed', subscriber.status, `The subscriber is ${subscriber.status}; left untouched`);
      }
      const inGroup = (subscriber.groups || []).some((g) => String(g.id) === group);
      if (action === 'remove-from-group' && !inGroup) return void (report.updated += 1);
      changes.push({
        index: i,
        request: action === 'unsubscribe'
          ? { method: 'POST', path: 'api/subscribers', body: { email: contacts[i].email, status: 'unsubscribed' } }
          : { method: 'DELETE', path: `api/subscribers/${encodeURIComponent(subscriber.id)}/groups/${encodeURIComponent(group)}` },
      });
    });
    if (changes.length === 0) return report;
    batch(config, changes.map((c) => c.request)).forEach((answer, j) => {
      if (answer.code < 300 || answer.code === 404) report.updated += 1;
      else if (answer.code === 422) issue(report, changes[j].index, 'rejected', '422', said(answer.body));
      else throw vendorError(answer.code, answer.body);
    });
    report.issues.sort((a, b) => a.index - b.index);
    return report;
  },
};

// --- Settings and contacts ---------------------------------------------------------------

function setting(config, key) {
  const found = config.settings.find(([k]) => k === key);
  const value = found ? found[1].trim() : '';
  return value === '' ? undefined : value;
}

function groupId(config) {
  const group = setting(config, 'group-id');
  if (group === undefined) throw error('invalid-config', 'the setting `group-id` is required', undefined, false);
  if (!/^[0-9]+$/.test(group)) {
    throw error('invalid-config', `group-id \`${group}\` is not a MailerLite group ID (digits)`, undefined, false);
  }
  return group;
}

/** Mapped fields other than the email and the names: the account's own fields. */
function customFields(config) {
  return config.fields.filter((f) => f !== 'email' && !(f in NAME_FIELDS));
}

/** The contact's mapped fields as MailerLite keys; a mapped field without a value is cleared. */
function fieldsOf(config, custom, contact) {
  const fields = {};
  if (config.fields.includes('first-name')) fields.name = contact.firstName ?? null;
  if (config.fields.includes('last-name')) fields.last_name = contact.lastName ?? null;
  for (const key of custom) {
    const found = contact.attributes.find(([k]) => k === key);
    fields[key] = found ? found[1] : null;
  }
  return fields;
}

// --- Reports and errors ------------------------------------------------------------------

function newReport() {
  return { created: 0, updated: 0, issues: [] };
}

function issue(report, index, kind, code, message) {
  report.issues.push({ index, kind, code: String(code), message });
}

/** A contract error: thrown, it becomes the call's `err`. */
function error(kind, message, vendorCode, retryable) {
  return { kind, message, vendorCode, retryable };
}

/** What MailerLite said: `message`, and the first of `errors` when it has them. */
function said(body) {
  const first = body && body.errors ? Object.values(body.errors)[0] : undefined;
  const detail = Array.isArray(first) ? first[0] : undefined;
  const text = (body && body.message) || 'no message';
  return detail && detail !== text ? `${text} (${detail})` : text;
}

/** Whether a 422 refuses the export's group rather than the contact (then the whole batch fails). */
function refusesGroup(body) {
  return Object.keys((body && body.errors) || {}).some((key) => key.startsWith('groups'));
}

/** Maps an error answer to the contract's kinds. */
function vendorError(status, body) {
  const quoted = `HTTP ${status}: ${said(body)}`;
  const code = String(status);
  if (status === 401 || status === 403) return error('unauthorized', `${NAME} refused the credential (${quoted})`, code, false);
  if (status === 404) return error('not-found', `${NAME} has no such resource (${quoted})`, code, false);
  if (status === 429) return error('rate-limited', `${NAME} throttled the request (${quoted})`, code, true);
  return error('vendor', `${NAME} answered ${quoted}`, code, status === 408 || status >= 500);
}

function expectOk(answer) {
  if (answer.status < 200 || answer.status >= 300) throw vendorError(answer.status, answer.json());
  return answer.json();
}

/** Sends `requests` as one batch; returns each answer (`{code, body}`) in order. */
function batch(config, requests) {
  const answer = send('POST', `${config.baseUrl}/batch`, { requests });
  const result = expectOk(answer);
  if (!Array.isArray(result.responses) || result.responses.length !== requests.length) {
    throw error('internal', `${NAME} answered ${requests.length} batched requests with ${result.responses?.length ?? 'no'} answers`, undefined, false);
  }
  return result.responses;
}

// --- JSON over wasi:http -----------------------------------------------------------------

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function get(url) {
  return send('GET', url, undefined);
}

/** Sends one request and reads the whole answer: `{status, text, json()}`. */
function send(method, url, body) {
  const parts = /^(https?):\/\/([^/]+)(\/.*)?$/.exec(url);
  if (!parts) throw error('invalid-config', `invalid URL \`${url}\``, undefined, false);
  const headers = [['accept', encoder.encode('application/json')]];
  const bytes = body === undefined ? undefined : encoder.encode(JSON.stringify(body));
  if (bytes) headers.push(['content-type', encoder.encode('application/json')]);
  const request = new OutgoingRequest(Fields.fromList(headers));
  request.setMethod({ tag: method.toLowerCase() });
  request.setScheme({ tag: parts[1] === 'https' ? 'HTTPS' : 'HTTP' });
  request.setAuthority(parts[2]);
  request.setPathWithQuery(parts[3] || '/');
  const outgoing = request.body();
  let future;
  try {
    future = handle(request, undefined);
  } catch (e) {
    throw transport(url, e);
  }
  if (bytes) {
    const stream = outgoing.write();
    for (let at = 0; at < bytes.length; at += 4096) {
      try {
        stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
      } catch {
        break; // the answer says why (e.g. the host refused the request)
      }
    }
    stream[Symbol.dispose]();
  }
  try {
    OutgoingBody.finish(outgoing, undefined);
  } catch {
    // reported with the answer
  }
  let ready;
  while ((ready = future.get()) === undefined) future.subscribe().block();
  if (ready.tag === 'err' || ready.val.tag === 'err') throw transport(url, ready.val);
  const response = ready.val.val;
  const status = response.status();
  const incoming = response.consume();
  const input = incoming.stream();
  const chunks = [];
  let length = 0;
  for (;;) {
    let chunk;
    try {
      chunk = input.blockingRead(65536n);
    } catch (e) {
      if (e?.payload?.tag === 'closed') break;
      throw error('transport', `reading the answer from ${url} failed`, undefined, true);
    }
    chunks.push(chunk);
    length += chunk.length;
  }
  const all = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.length;
  }
  const text = decoder.decode(all);
  return {
    status,
    text,
    json() {
      try {
        return JSON.parse(text);
      } catch {
        throw error('internal', `unexpected answer from ${NAME} (HTTP ${status}): ${text.slice(0, 200)}`, undefined, false);
      }
    },
  };
}

/** A request that did not complete, in words (the host's refusals are not retryable). */
function transport(url, cause) {
  const code = cause?.payload ?? cause?.val ?? cause;
  const tag = code?.tag ?? String(code);
  const refused = {
    'HTTP-request-denied': 'refused by the host (not on the connection\'s allowed hosts)',
    'destination-IP-prohibited': 'refused by the host (the name resolves to an address vendors never use)',
  }[tag];
  const detail = tag === 'internal-error' && code.val ? code.val : tag;
  return error('transport', `request to ${url} failed: ${refused ?? detail}`, undefined, refused === undefined);
}
