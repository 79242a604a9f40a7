// kensa operator page: live station tiles per line, verdict detail with the heat map, the
// review queue and "try it". Plain JavaScript, no build step, no third-party code.
//
// Safety: every text that comes from kensa (ids, notes, labels, comments) is put on the page
// with textContent or as a text node, never as markup; the server's Content-Security-Policy
// allows no inline script either.
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  /** A station with no verdict for this long is marked silent (?silent=<minutes>, default 5). */
  const SILENT_AFTER_MS = (Number(params.get('silent')) > 0 ? Number(params.get('silent')) : 5) * 60_000;
  /** The counts are read again this often, so old verdicts leave the window. */
  const RESYNC_MS = 60_000;
  /** The review queue is read again this often (reviews may come from other screens). */
  const QUEUE_EVERY_MS = 15_000;
  /** Newest verdicts shown as chips on a tile. */
  const RECENT = 8;

  const state = {
    overview: null,
    stations: new Map(),
    countedUpTo: 0,
    lastEventId: null,
    labels: new Map(),
    queue: [],
  };

  // ---- talking to kensa: every request goes through request(), the one place that adds the
  // client token. When kensa asks for one (401), the operator is asked once; the token lives in
  // this tab's sessionStorage only, so closing the tab forgets it.

  const TOKEN_KEY = 'kensa-token';

  function withToken(options) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return options;
    return { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` } };
  }

  async function request(path, options = {}) {
    const sent = sessionStorage.getItem(TOKEN_KEY);
    let response = await fetch(path, withToken(options));
    if (response.status === 401) {
      // Requests refused together ask once: the first asks, the rest find the new token.
      let token = sessionStorage.getItem(TOKEN_KEY);
      if (!token || token === sent) {
        token = window.prompt('kensa asks for a client token (operator and mes scopes):');
        if (token) sessionStorage.setItem(TOKEN_KEY, token.trim());
      }
      if (token) response = await fetch(path, withToken(options));
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.error) message = body.error;
      } catch (_) { /* not JSON */ }
      if (response.status === 401 || response.status === 403) sessionStorage.removeItem(TOKEN_KEY);
      throw new Error(message);
    }
    return response;
  }

  const getJson = async (path) => (await request(path)).json();
  const verdictPath = (station, inspection) =>
    `/v1/verdicts/${encodeURIComponent(station)}/${encodeURIComponent(inspection)}`;

  // ---- building the page: text only through text nodes

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value == null) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'style') Object.assign(node.style, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat(Infinity)) {
      if (child == null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const svg = (tag, attrs = {}) => {
    const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    return node;
  };

  const percent = (x) => `${(100 * x).toFixed(x >= 0.1 || x === 0 ? 0 : 1)} %`;
  const displayLabel = (name) => state.labels.get(name) || name;

  function ago(time) {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(time).getTime()) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    const minutes = Math.round(seconds / 60);
    if (minutes < 120) return `${minutes} min ago`;
    const hours = Math.round(minutes / 60);
    return hours < 48 ? `${hours} h ago` : `${Math.round(hours / 24)} days ago`;
  }

  /** What a verdict means for the line, as a colour class, a word and a short letter. */
  function status(verdict) {
    switch (verdict.disposition) {
      case 'pass': return { cls: 's-pass', word: 'PASS', letter: 'P' };
      case 'fail': return { cls: 's-fail', word: 'FAIL', letter: 'F' };
      case 'review': return { cls: 's-review', word: 'REVIEW', letter: 'R' };
      default:
        return verdict.is_defect
          ? { cls: 's-defect', word: 'DEFECT', letter: 'D' }
          : { cls: 's-ok', word: 'OK', letter: 'OK' };
    }
  }

  const what = (verdict) =>
    `${verdict.display_label || displayLabel(verdict.label)} · ${percent(verdict.confidence)}`;

  // ---- line overview

  function stationEntry(stored) {
    const id = stored.station_id;
    let entry = state.stations.get(id);
    if (!entry) {
      entry = { latest: stored, recent: [], window: emptyCounts(), buckets: [] };
      state.stations.set(id, entry);
    }
    return entry;
  }

  const emptyCounts = () => ({ total: 0, defects: 0, pass: 0, fail: 0, review: 0 });

  function count(counts, verdict) {
    counts.total += 1;
    if (verdict.is_defect) counts.defects += 1;
    if (verdict.disposition && counts[verdict.disposition] != null) counts[verdict.disposition] += 1;
  }

  async function resync() {
    const overview = await getJson('/v1/stations');
    state.overview = overview;
    state.countedUpTo = Math.max(state.countedUpTo, overview.cursor);
    for (const summary of overview.stations) {
      const entry = stationEntry(summary.latest);
      if (summary.latest.cursor >= (entry.latest.cursor || 0)) entry.latest = summary.latest;
      if (!entry.recent.some((v) => v.cursor === summary.latest.cursor)) {
        entry.recent.push(summary.latest);
        entry.recent.sort((a, b) => b.cursor - a.cursor);
        entry.recent.length = Math.min(entry.recent.length, RECENT);
      }
      entry.window = summary.window;
      entry.buckets = summary.buckets;
    }
    renderOverview();
    return overview.cursor;
  }

  /** Fills the tiles' recent strips with the newest stored verdicts (the stream adds the rest). */
  async function seedRecent(cursor) {
    const since = Math.max(0, cursor - 200);
    const page = await getJson(`/v1/verdicts?since=${since}&limit=200`);
    for (const stored of page.verdicts) {
      const entry = state.stations.get(stored.station_id);
      if (entry && !entry.recent.some((v) => v.cursor === stored.cursor)) entry.recent.push(stored);
    }
    for (const entry of state.stations.values()) {
      entry.recent.sort((a, b) => b.cursor - a.cursor);
      entry.recent.length = Math.min(entry.recent.length, RECENT);
    }
    renderOverview();
  }

  function onVerdict(stored) {
    const entry = stationEntry(stored);
    if (stored.cursor > (entry.latest.cursor || 0)) entry.latest = stored;
    if (!entry.recent.some((v) => v.cursor === stored.cursor)) {
      entry.recent.unshift(stored);
      entry.recent.sort((a, b) => b.cursor - a.cursor);
      entry.recent.length = Math.min(entry.recent.length, RECENT);
    }
    if (stored.cursor > state.countedUpTo && state.overview) {
      count(entry.window, stored);
      const since = new Date(state.overview.since).getTime();
      while (entry.buckets.length < state.overview.bucket_count) entry.buckets.push(emptyCounts());
      const index = Math.min(
        entry.buckets.length - 1,
        Math.max(0, Math.floor((new Date(stored.stored_at).getTime() - since) / state.overview.bucket_ms)),
      );
      count(entry.buckets[index], stored);
    }
    if (stored.disposition === 'review' && !stored.review) soon('queue', loadQueue);
    soon('overview', renderOverview);
  }

  /** Runs `work` once within a moment, however many times it is asked for meanwhile. */
  const pending = new Set();
  function soon(name, work) {
    if (pending.has(name)) return;
    pending.add(name);
    setTimeout(() => { pending.delete(name); work(); }, name === 'queue' ? 1000 : 100);
  }

  function renderOverview() {
    const byLine = new Map();
    for (const [id, entry] of state.stations) {
      const line = (entry.latest.metadata && entry.latest.metadata.line) || '';
      if (!byLine.has(line)) byLine.set(line, []);
      byLine.get(line).push([id, entry]);
    }
    const lines = [...byLine.keys()].sort((a, b) => (a === '') - (b === '') || a.localeCompare(b));
    const container = document.getElementById('lines');
    container.replaceChildren(...lines.map((line) => el('section', { class: 'line' },
      el('h2', { text: line ? `Line ${line}` : 'No line given' }),
      el('div', { class: 'tiles' },
        byLine.get(line).sort((a, b) => a[0].localeCompare(b[0])).map(([id, entry]) => tile(id, entry))),
    )));
    document.getElementById('no-stations').hidden = state.stations.size > 0;
    updateDatalists();
  }

  function tile(id, entry) {
    const latest = entry.latest;
    const look = status(latest);
    const silentFor = Date.now() - new Date(latest.stored_at).getTime();
    const silent = silentFor > SILENT_AFTER_MS;
    const counts = entry.window;
    const headline = flagged(counts);
    const rate = counts.total ? headline.count / counts.total : 0;
    const node = el('article', { class: `tile${silent ? ' silent' : ''}`, 'data-station': id },
      el('div', { class: 'tile-head' },
        el('h3', { text: id }),
        el('span', { class: 'model', text: `${latest.model} v${latest.model_version}` })),
      silent ? el('div', { class: 'silent-badge', text: `SILENT · last unit ${ago(latest.stored_at)}` }) : null,
      el('button', {
        type: 'button', class: `latest ${look.cls}`, 'data-inspection': latest.inspection_id,
        title: 'Open this verdict', onclick: () => openDetail(id, latest.inspection_id),
      },
      el('span', { class: 'word', text: look.word }),
      el('span', { class: 'what', text: what(latest) }),
      el('span', { class: 'when', text: `${latest.inspection_id} · ${ago(latest.stored_at)}` })),
      el('div', { class: 'recent' }, entry.recent.map((v) => {
        const s = status(v);
        return el('button', {
          type: 'button', class: `chip ${s.cls}`, title: `${s.word}: ${what(v)} (${v.inspection_id})`,
          onclick: () => openDetail(id, v.inspection_id),
        }, s.letter);
      })),
      el('div', { class: 'figures' },
        el('div', { class: 'rate' }, percent(rate), el('small', { text: `${headline.word}, last ${windowWords()}` })),
        mix(counts),
        el('div', { class: 'mix-words', text: mixWords(counts) })),
      sparkline(entry.buckets),
      el('div', { class: 'spark-caption', text: `${headline.word} per ${bucketWords()}, oldest left` }),
    );
    return node;
  }

  // What a tile's rate counts: with a decision rule the units failed (the review share shows
  // in the mix beside it; a unit sent to review is not yet a defect), else the model's defect
  // calls.
  function flagged(counts) {
    const decided = counts.pass + counts.fail + counts.review > 0;
    return decided ? { count: counts.fail, word: 'failed' } : { count: counts.defects, word: 'defects' };
  }

  function windowWords() {
    if (!state.overview) return 'hour';
    const bucketMs = state.overview.bucket_ms;
    const minutes = Math.round((bucketMs * state.overview.bucket_count) / 60_000);
    return minutes === 60 ? 'hour' : `${minutes} min`;
  }

  const bucketWords = () =>
    state.overview ? `${Math.round(state.overview.bucket_ms / 60_000)} min` : '5 min';

  function mix(counts) {
    const none = counts.total - counts.pass - counts.fail - counts.review;
    const parts = [['m-pass', counts.pass], ['m-fail', counts.fail], ['m-review', counts.review], ['m-none', none]];
    return el('div', { class: 'mix', title: mixWords(counts) },
      parts.filter(([, n]) => n > 0).map(([cls, n]) =>
        el('span', { class: cls, style: { width: `${(100 * n) / counts.total}%` } })));
  }

  function mixWords(counts) {
    if (!counts.total) return 'no units in the window';
    const decided = counts.pass + counts.fail + counts.review;
    if (!decided) return `${counts.total} units, ${counts.defects} defects`;
    return `pass ${counts.pass} · fail ${counts.fail} · review ${counts.review} (of ${counts.total})`;
  }

  function sparkline(buckets) {
    const chart = svg('svg', { class: 'spark', viewBox: '0 0 120 40', preserveAspectRatio: 'none', role: 'img' });
    const n = Math.max(buckets.length, 1);
    const width = 120 / n;
    buckets.forEach((bucket, i) => {
      const { count, word } = flagged(bucket);
      const rate = bucket.total ? count / bucket.total : 0;
      const height = bucket.total ? Math.max(2, 38 * rate) : 2;
      const bar = svg('rect', {
        x: (i * width + 0.5).toFixed(2), y: (40 - height).toFixed(2),
        width: Math.max(width - 1, 0.5).toFixed(2), height: height.toFixed(2),
      });
      if (!bucket.total || !count) bar.setAttribute('class', 'empty');
      const title = svg('title');
      title.textContent = bucket.total ? `${count} ${word} of ${bucket.total}` : 'no units';
      bar.append(title);
      chart.append(bar);
    });
    return chart;
  }

  function updateDatalists() {
    const stations = [...state.stations.keys()].sort();
    const lines = [...new Set([...state.stations.values()]
      .map((e) => e.latest.metadata && e.latest.metadata.line).filter(Boolean))].sort();
    document.getElementById('known-stations').replaceChildren(...stations.map((s) => el('option', { value: s })));
    document.getElementById('known-lines').replaceChildren(...lines.map((l) => el('option', { value: l })));
  }

  // ---- the live stream: Server-Sent Events read with fetch (so the token header goes along),
  // resuming after the last event id on every reconnect

  function setLive(live) {
    const badge = document.getElementById('live');
    badge.dataset.state = live;
    badge.textContent = live === 'live' ? 'LIVE' : live === 'reconnecting' ? 'RECONNECTING…' : 'CONNECTING';
  }

  async function follow(since) {
    state.lastEventId = since;
    for (;;) {
      try {
        const headers = {};
        if (state.lastEventId != null) headers['Last-Event-ID'] = String(state.lastEventId);
        const response = await request(`/v1/verdicts/stream?since=${state.lastEventId || 0}`, { headers });
        setLive('live');
        await readEvents(response.body.getReader());
      } catch (_) { /* the stream broke: reconnect below */ }
      setLive('reconnecting');
      await new Promise((resolve) => setTimeout(resolve, 1500));
    }
  }

  async function readEvents(reader) {
    const decoder = new TextDecoder();
    let buffer = '';
    let event = { type: 'message', data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
        if (line === '') {
          dispatch(event);
          event = { type: 'message', data: [], id: null };
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event.type = value;
          else if (field === 'data') event.data.push(value);
          else if (field === 'id') event.id = value;
        }
      }
    }
  }

  function dispatch(event) {
    if (event.id != null && event.id !== '') state.lastEventId = Number(event.id);
    if (event.type === 'verdict' && event.data.length) {
      onVerdict(JSON.parse(event.data.join('\n')));
    } else if (event.type === 'error') {
      throw new Error(event.data.join('\n'));
    }
  }

  // ---- verdict detail

  async function openDetail(station, inspection) {
    const dialog = document.getElementById('detail');
    dialog.replaceChildren(el('p', { class: 'message', text: 'Loading…' }));
    if (!dialog.open) dialog.showModal();
    try {
      const stored = await getJson(verdictPath(station, inspection));
      dialog.replaceChildren(...detail(stored));
      if (stored.image_retained) showHeatmap(dialog, stored);
      else drawAttention(dialog.querySelector('canvas'), stored.attention);
    } catch (error) {
      dialog.replaceChildren(
        el('div', { class: 'detail-head' },
          el('div', { class: 'verdict-word s-unknown' }, el('span', { class: 'word', text: 'NOT FOUND' })),
          el('button', { type: 'button', class: 'close', onclick: () => dialog.close(), text: 'Close' })),
        el('p', { class: 'message error', text: error.message }));
    }
  }

  function detail(stored) {
    const look = status(stored);
    const dialog = document.getElementById('detail');
    const decision = stored.decision;
    const meta = stored.metadata || {};
    const facts = [
      ['Station', stored.station_id],
      ['Inspection', stored.inspection_id],
      ['Line', meta.line],
      ['Lot', meta.lot_id],
      ['Model', `${stored.model} version ${stored.model_version}`],
      ['Disposition', stored.disposition ? stored.disposition.toUpperCase() : 'none (the model has no pass / fail rule)'],
      decision ? ['Thresholds', `pass if normal ≥ ${decision.pass_threshold}, fail if a defect ≥ ${decision.fail_threshold} (from ${decision.thresholds_from}, temperature ${decision.temperature})`] : null,
      decision && decision.defect_class ? ['Failed for', displayLabel(decision.defect_class)] : null,
      ['Received', new Date(stored.received_at).toLocaleString()],
      ['Timings', `queue ${stored.timings.queue_ms} ms · preprocess ${stored.timings.preprocess_ms} ms · inference ${stored.timings.inference_ms} ms · total ${stored.timings.total_ms} ms (batch of ${stored.batch_size})`],
      meta.ocr_text ? ['OCR text', meta.ocr_text] : null,
      ...Object.entries(meta)
        .filter(([key]) => !['line', 'lot_id', 'ocr_text'].includes(key))
        .map(([key, value]) => [key, value]),
    ].filter((fact) => fact && fact[1] != null && fact[1] !== '');
    const probabilities = Object.entries(stored.probabilities).sort((a, b) => b[1] - a[1]);
    return [
      el('div', { class: 'detail-head' },
        el('div', { class: `verdict-word ${look.cls}` },
          el('span', { class: 'word', text: look.word }),
          el('span', { class: 'what', text: what(stored) })),
        el('button', { type: 'button', class: 'close', onclick: () => dialog.close(), text: 'Close' })),
      el('div', { class: 'detail-body' },
        el('figure', {},
          stored.image_retained
            ? el('img', { class: 'heatmap', alt: 'Heat map: where the model looked, over the unit' })
            : el('canvas', { class: 'attention', width: 280, height: 280 }),
          el('figcaption', {
            text: stored.image_retained
              ? 'Where the model looked, over the image the station sent (hotter = more attention).'
              : 'Attention grid only: the image was not kept (kensa keeps images of defects and units for review with --retain-images).',
          })),
        el('div', {},
          reviewBox(stored),
          el('dl', { class: 'facts' }, facts.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: String(v) })])),
          el('h3', { class: 'section', text: 'Probabilities' }),
          el('table', { class: 'probs' }, el('tbody', {}, probabilities.map(([label, p], i) =>
            el('tr', { class: i === 0 ? 'top' : null },
              el('td', { text: displayLabel(label) }),
              el('td', { class: 'prob-bar' }, el('span', { style: { width: `${(100 * p).toFixed(1)}%` } })),
              el('td', { text: percent(p) }))))),
          el('h3', { class: 'section', text: 'Note' }),
          el('p', { class: 'note', text: stored.note || '(empty)' }))),
    ];
  }

  async function showHeatmap(dialog, stored) {
    const image = dialog.querySelector('img.heatmap');
    try {
      const response = await request(`${verdictPath(stored.station_id, stored.inspection_id)}/heatmap`);
      image.src = URL.createObjectURL(await response.blob());
      image.addEventListener('load', () => URL.revokeObjectURL(image.src), { once: true });
    } catch (error) {
      image.replaceWith(el('p', { class: 'message error', text: `Heat map: ${error.message}` }));
    }
  }

  /** The attention grid alone, on the same log scale as the server's heat map (1× to 8× an even share). */
  function drawAttention(canvas, attention) {
    if (!canvas || !attention) return;
    const context = canvas.getContext('2d');
    const cellW = canvas.width / attention.width;
    const cellH = canvas.height / attention.height;
    const even = 1 / (attention.width * attention.height);
    attention.values.forEach((value, i) => {
      const level = Math.min(1, Math.max(0, Math.log(Math.max(value, 1e-9) / even) / Math.log(8)));
      const x = i % attention.width;
      const y = Math.floor(i / attention.width);
      context.fillStyle = `rgb(${Math.round(40 + 212 * level)}, ${Math.round(20 + 180 * level * level)}, ${Math.round(60 + 40 * (1 - level))})`;
      context.fillRect(x * cellW, y * cellH, cellW + 1, cellH + 1);
    });
  }

  function reviewBox(stored) {
    const box = el('div', { class: 'review-box' }, el('h3', { class: 'section', text: 'Review' }));
    if (stored.review) {
      box.append(reviewDone(stored.review));
      if (stored.review.reviewer === document.getElementById('reviewer').value.trim()) {
        box.append(el('p', { text: 'You have reviewed this unit; a second opinion comes from another reviewer.' }));
        return box;
      }
      box.append(el('h3', { class: 'section', text: 'Second opinion' }));
    }
    const labels = Object.keys(stored.probabilities);
    const select = el('select', { name: 'label' }, labels.map((label) =>
      el('option', { value: label, text: displayLabel(label) })));
    select.value = stored.label;
    const comment = el('textarea', { name: 'comment', rows: 2, maxlength: 2000, placeholder: 'optional: what you saw' });
    const message = el('p', { class: 'message', role: 'status' });
    const send = async (label) => {
      const reviewer = document.getElementById('reviewer').value.trim();
      if (!reviewer) {
        message.className = 'message error';
        message.textContent = 'Enter your name as reviewer at the top of the page first.';
        document.getElementById('reviewer').focus();
        return;
      }
      message.className = 'message';
      message.textContent = 'Saving…';
      try {
        const response = await request(`${verdictPath(stored.station_id, stored.inspection_id)}/review`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ label, reviewer, comment: comment.value }),
        });
        const review = await response.json();
        form.replaceWith(reviewDone(review));
        message.textContent = review.outcome === 'confirmed' ? 'Saved: the model was right.' : 'Saved: label corrected.';
        loadQueue();
      } catch (error) {
        message.className = 'message error';
        message.textContent = error.message;
      }
    };
    const form = el('form', { class: 'review-form', onsubmit: (e) => { e.preventDefault(); send(select.value); } },
      el('button', {
        type: 'button', class: 'confirm', onclick: () => send(stored.label),
        text: `Confirm: ${displayLabel(stored.label)}`,
      }),
      el('label', {}, 'True label', select),
      el('label', {}, 'Comment', comment),
      el('button', { type: 'submit', class: 'override', text: 'Save label' }));
    box.append(form, message);
    return box;
  }

  function reviewDone(review) {
    return el('div', { class: 'review-done', 'data-review': review.cursor },
      el('strong', {
        text: `${review.outcome === 'confirmed' ? 'CONFIRMED' : 'OVERRIDDEN'}: ${displayLabel(review.label)}`,
      }),
      ` by ${review.reviewer}, ${ago(review.reviewed_at)}`,
      review.comment ? el('p', { class: 'comment', text: review.comment }) : null);
  }

  // ---- review queue: units with disposition review that no one has reviewed, oldest first

  async function loadQueue() {
    try {
      const page = await getJson('/v1/verdicts?disposition=review&reviewed=false&limit=1000');
      state.queue = page.verdicts;
      renderQueue();
    } catch (_) { /* shown stale until the next read */ }
  }

  function renderQueue() {
    document.getElementById('queue-count').textContent = String(state.queue.length);
    const select = document.getElementById('queue-line');
    const lines = [...new Set(state.queue.map((v) => (v.metadata && v.metadata.line) || ''))].sort();
    const chosen = select.value;
    select.replaceChildren(el('option', { value: '', text: 'all lines' }),
      ...lines.filter(Boolean).map((line) => el('option', { value: line, text: line })));
    select.value = lines.includes(chosen) ? chosen : '';
    const shown = state.queue.filter((v) => !select.value || (v.metadata && v.metadata.line) === select.value);
    const byLine = new Map();
    for (const v of shown) {
      const line = (v.metadata && v.metadata.line) || '';
      if (!byLine.has(line)) byLine.set(line, []);
      byLine.get(line).push(v);
    }
    document.getElementById('queue').replaceChildren(...[...byLine.keys()].sort().map((line) =>
      el('section', { class: 'queue-line' },
        el('h2', { text: line ? `Line ${line} · ${byLine.get(line).length} waiting` : `No line given · ${byLine.get(line).length} waiting` }),
        byLine.get(line).map((v) => el('button', {
          type: 'button', class: 'queue-item', 'data-inspection': v.inspection_id,
          onclick: () => openDetail(v.station_id, v.inspection_id),
        },
        el('span', { class: 'waited', text: ago(v.stored_at).replace(' ago', '') }),
        el('span', { text: v.station_id }),
        el('span', { text: v.inspection_id }),
        el('span', { text: what(v) }),
        el('span', { class: 'open', text: 'Review ›' }))))));
    document.getElementById('queue-empty').hidden = shown.length > 0;
  }

  // ---- try it: the normal inspection API, with the heat map in the answer

  function setupTry() {
    const drop = document.getElementById('drop');
    const input = document.getElementById('try-image');
    const text = document.getElementById('drop-text');
    input.addEventListener('change', () => {
      text.textContent = input.files.length ? input.files[0].name : 'Drop an image here, or tap to choose one';
    });
    drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      if (e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        input.dispatchEvent(new Event('change'));
      }
    });
    document.getElementById('try-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const result = document.getElementById('try-result');
      const button = document.getElementById('try-submit');
      const form = new FormData();
      form.append('image', input.files[0]);
      form.append('note', document.getElementById('try-note').value);
      form.append('station_id', document.getElementById('try-station').value.trim());
      const line = document.getElementById('try-line').value.trim();
      if (line) form.append('line', line);
      button.disabled = true;
      result.replaceChildren(el('p', { class: 'message', text: 'Inspecting…' }));
      try {
        const verdict = await (await request('/v1/inspections?heatmap=true', { method: 'POST', body: form })).json();
        const look = status(verdict);
        result.replaceChildren(
          el('img', { src: `data:image/png;base64,${verdict.heatmap_png}`, alt: 'Heat map of the unit' }),
          el('div', {},
            el('div', { class: `latest ${look.cls}`, 'data-inspection': verdict.inspection_id },
              el('span', { class: 'word', text: look.word }),
              el('span', { class: 'what', text: what(verdict) }),
              el('span', { class: 'when', text: `${verdict.station_id} · ${verdict.inspection_id}` })),
            el('p', {}, el('button', {
              type: 'button', class: 'primary', text: 'Open the stored verdict',
              onclick: () => openDetail(verdict.station_id, verdict.inspection_id),
            }))));
      } catch (error) {
        result.replaceChildren(el('p', { class: 'message error', text: error.message }));
      } finally {
        button.disabled = false;
      }
    });
  }

  // ---- header: views, models, reviewer

  function setupHeader() {
    for (const tab of document.querySelectorAll('.tab')) {
      tab.addEventListener('click', () => {
        for (const other of document.querySelectorAll('.tab')) {
          other.setAttribute('aria-pressed', String(other === tab));
          document.getElementById(`view-${other.dataset.view}`).hidden = other !== tab;
        }
        if (tab.dataset.view === 'queue') loadQueue();
      });
    }
    const reviewer = document.getElementById('reviewer');
    reviewer.value = localStorage.getItem('kensa.reviewer') || '';
    reviewer.addEventListener('change', () => localStorage.setItem('kensa.reviewer', reviewer.value.trim()));
    document.getElementById('queue-line').addEventListener('change', renderQueue);
  }

  async function loadModels() {
    try {
      const { models } = await getJson('/v1/models');
      for (const model of models) {
        for (const label of model.labels) state.labels.set(label.name, label.display_name);
      }
      document.getElementById('models').textContent = models.length
        ? `model in service: ${models.map((m) => `${m.name} v${Math.max(...m.versions)}`).join(', ')}`
        : 'model: loading';
      if (!models.length) setTimeout(loadModels, 2000);
    } catch (_) {
      setTimeout(loadModels, 2000);
    }
  }

  async function start() {
    setupHeader();
    setupTry();
    loadModels();
    loadQueue();
    setInterval(loadQueue, QUEUE_EVERY_MS);
    setInterval(renderOverview, 5000);
    let since = 0;
    for (;;) {
      try {
        since = await resync();
        break;
      } catch (_) {
        setLive('reconnecting');
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
    setInterval(() => resync().catch(() => {}), RESYNC_MS);
    seedRecent(since).catch(() => {});
    follow(since);
  }

  start();
})();
