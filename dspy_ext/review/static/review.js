// dspy-ext review page: keyboard-first grading. No framework, no build step.
// Every text from the server is set with textContent, never as HTML.
(function () {
  'use strict';

  var token = document.querySelector('meta[name="review-token"]').content;
  var stateNode = document.getElementById('review-state');
  var state = stateNode ? JSON.parse(stateNode.textContent) : null;
  var statusNode = document.getElementById('status');
  var filter = document.getElementById('filter').dataset.filter || 'unreviewed';
  var saved = 0;
  var pendingBad = false;
  // Key press -> saved write times (ms), and j/k -> this page shown (ms), read by bench/review_latency.py.
  window.reviewTimings = [];
  var navStart = parseFloat(sessionStorage.getItem('reviewNavStart') || 'NaN');
  sessionStorage.removeItem('reviewNavStart');
  window.reviewNavMs = isNaN(navStart) ? null : Date.now() - navStart;

  function newId() {
    if (window.crypto && crypto.getRandomValues) {
      var a = new Uint32Array(4);
      crypto.getRandomValues(a);
      return Array.prototype.map.call(a, function (x) { return x.toString(16); }).join('');
    }
    return String(Math.random()).slice(2);
  }
  // One id per tab: undo and "skipped" navigation are per tab.
  var client = sessionStorage.getItem('reviewClient');
  if (!client) { client = newId(); sessionStorage.setItem('reviewClient', client); }

  function setStatus(text, kind) {
    statusNode.textContent = text;
    statusNode.className = kind || '';
  }

  function headers() {
    return { 'Content-Type': 'application/json', 'X-Review-Token': token, 'X-Review-Client': client };
  }

  function post(path, body, started) {
    return fetch(path, { method: 'POST', headers: headers(), body: JSON.stringify(body || {}) })
      .then(function (res) {
        return res.json().catch(function () { return { error: 'HTTP ' + res.status }; }).then(function (data) {
          if (!res.ok) {
            setStatus(data.error || ('HTTP ' + res.status), 'error');
            throw new Error(data.error || ('HTTP ' + res.status));
          }
          if (started !== undefined) { window.reviewTimings.push(performance.now() - started); }
          saved += 1;
          document.body.dataset.saved = String(saved);
          setStatus('saved', 'ok');
          return data;
        });
      });
  }

  function updateProgress(data) {
    if (data && typeof data.reviewed === 'number') {
      document.getElementById('progress').textContent = data.reviewed + '/' + data.total + ' reviewed';
    }
  }

  function showItem(data) {
    state.grade = data.grade;
    state.reason = data.reason || '';
    state.correction = data.correction || '';
    var badge = document.getElementById('grade-badge');
    badge.textContent = data.grade || 'unreviewed';
    badge.className = 'grade grade-' + (data.grade || 'none');
    document.getElementById('reason').value = state.reason;
    document.getElementById('correction').value = state.correction;
    state.criteria.forEach(function (c) {
      var mark = data.judgements[String(c.id)];
      c.mark = mark === undefined ? null : mark;
      var node = document.querySelector('#criteria li[data-cid="' + c.id + '"] .mark');
      if (node) {
        node.textContent = c.mark === true ? 'pass' : (c.mark === false ? 'fail' : '–');
        node.className = 'mark mark-' + (c.mark === true ? 'pass' : (c.mark === false ? 'fail' : 'none'));
      }
    });
    updateProgress(data);
  }

  function itemUrl(key) {
    return '/item/' + encodeURIComponent(key) + '?filter=' + encodeURIComponent(filter);
  }

  // ---- navigation history (per tab) ----
  var history = JSON.parse(sessionStorage.getItem('reviewHistory') || '[]');
  var position = parseInt(sessionStorage.getItem('reviewPosition') || '-1', 10);
  if (state) {
    if (history[position] !== state.key) {
      history = history.slice(0, position + 1);
      history.push(state.key);
      position = history.length - 1;
      if (history.length > 500) { position -= history.length - 500; history = history.slice(-500); }
    }
    sessionStorage.setItem('reviewHistory', JSON.stringify(history));
    sessionStorage.setItem('reviewPosition', String(position));
  }

  function goTo(index) {
    sessionStorage.setItem('reviewNavStart', String(Date.now()));
    sessionStorage.setItem('reviewPosition', String(index));
    window.location.href = itemUrl(history[index]);
  }

  function next() {
    if (state && position < history.length - 1) { goTo(position + 1); return; }
    sessionStorage.setItem('reviewNavStart', String(Date.now()));
    var url = '/api/next?filter=' + encodeURIComponent(filter) + (state ? '&current=' + encodeURIComponent(state.key) : '');
    fetch(url, { headers: headers() }).then(function (res) { return res.json(); }).then(function (data) {
      if (data.error) { setStatus(data.error, 'error'); return; }
      if (!data.key) { setStatus('nothing left under this filter (f: change filter)', 'info'); return; }
      window.location.href = itemUrl(data.key);
    });
  }

  function previous() {
    if (position > 0) { goTo(position - 1); } else { setStatus('this is the first output you saw', 'info'); }
  }

  function cycleFilter() {
    var values = Array.prototype.map.call(document.querySelectorAll('#filters span'), function (n) { return n.dataset.value; });
    var nextFilter = values[(values.indexOf(filter) + 1) % values.length];
    window.location.href = '/?filter=' + encodeURIComponent(nextFilter) + '&client=' + encodeURIComponent(client);
  }

  // ---- actions ----
  function grade(value, started) {
    var body = { grade: value };
    if (value === 'bad') { body.reason = document.getElementById('reason').value; }
    return post('/api/items/' + encodeURIComponent(state.key) + '/grade', body, started).then(showItem);
  }

  function startBad(started) {
    var reason = document.getElementById('reason');
    if (reason.value.trim()) { pendingBad = false; grade('bad', started); return; }
    pendingBad = true;
    reason.focus();
    setStatus('Bad: write the reason, Enter saves, Esc cancels', 'info');
  }

  function saveReason(started) {
    var reason = document.getElementById('reason');
    var action = pendingBad ? grade('bad', started)
      : post('/api/items/' + encodeURIComponent(state.key) + '/reason', { reason: reason.value }, started).then(showItem);
    action.then(function () { pendingBad = false; reason.blur(); }, function () {});
  }

  function saveCorrection(started) {
    var node = document.getElementById('correction');
    post('/api/items/' + encodeURIComponent(state.key) + '/correction', { correction: node.value }, started)
      .then(function (data) { showItem(data); node.blur(); }, function () {});
  }

  function toggleCriterion(index, started) {
    var c = state.criteria[index];
    if (!c) { setStatus('no criterion ' + (index + 1), 'error'); return; }
    // unmarked -> fail -> pass -> unmarked
    var nextMark = c.mark === null || c.mark === undefined ? false : (c.mark === false ? true : null);
    post('/api/items/' + encodeURIComponent(state.key) + '/criteria/' + c.id, { passed: nextMark }, started)
      .then(showItem, function () {});
  }

  function undo() {
    post('/api/undo', {}).then(function (data) {
      if (!data.key) { setStatus('nothing to undo', 'info'); return; }
      if (state && data.key === state.key) {
        fetch('/api/items/' + encodeURIComponent(data.key), { headers: headers() })
          .then(function (res) { return res.json(); }).then(function (item) { showItem(item); setStatus('undone', 'ok'); });
      } else {
        window.location.href = itemUrl(data.key);
      }
    }, function () {});
  }

  var form = document.getElementById('new-criterion');
  function openForm(proposal) {
    if (!form) { return; }
    form.hidden = false;
    if (proposal) {
      document.getElementById('crit-name').value = proposal.name;
      document.getElementById('crit-desc').value = proposal.description;
    }
    document.getElementById('crit-name').focus();
  }
  function closeForm() {
    form.hidden = true;
    ['crit-name', 'crit-desc', 'crit-check'].forEach(function (id) { document.getElementById(id).value = ''; });
    document.activeElement.blur();
  }
  function submitForm() {
    post('/api/criteria', {
      name: document.getElementById('crit-name').value,
      description: document.getElementById('crit-desc').value,
      check: document.getElementById('crit-check').value
    }).then(function () { window.location.reload(); }, function () {});
  }
  function propose() {
    setStatus('asking the LM for a criterion…', 'info');
    post('/api/propose', { item: state.key, reason: document.getElementById('reason').value })
      .then(function (data) {
        openForm(data);
        setStatus('proposal: edit it, Enter accepts, Esc discards', 'info');
      }, function () {});
  }

  // ---- keyboard ----
  function inField(target) {
    return target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA' || target.tagName === 'SELECT');
  }

  document.addEventListener('keydown', function (event) {
    var started = performance.now();
    var target = event.target;
    if (inField(target)) {
      if (target.id === 'reason') {
        if (event.key === 'Enter') { event.preventDefault(); saveReason(started); }
        else if (event.key === 'Escape') { target.value = state.reason; pendingBad = false; target.blur(); setStatus('', ''); }
      } else if (target.id === 'correction') {
        if (event.key === 'Enter' && !event.shiftKey) { event.preventDefault(); saveCorrection(started); }
        else if (event.key === 'Escape') { target.value = state.correction; target.blur(); }
      } else if (form && form.contains(target)) {
        if (event.key === 'Enter') { event.preventDefault(); submitForm(); }
        else if (event.key === 'Escape') { closeForm(); setStatus('discarded', 'info'); }
      } else if (target.classList.contains('check-input')) {
        if (event.key === 'Enter') {
          event.preventDefault();
          var cid = target.closest('form').dataset.cid;
          post('/api/criteria/' + cid + '/checks', { check: target.value }).then(function () { window.location.reload(); }, function () {});
        } else if (event.key === 'Escape') { target.blur(); }
      }
      return;
    }
    if (event.altKey || event.metaKey) { return; }
    if (event.ctrlKey) {
      if (event.key === 'z') { event.preventDefault(); undo(); }
      return;
    }
    var key = event.key;
    if (key === '?') { var help = document.getElementById('help'); help.hidden = !help.hidden; return; }
    if (key === 'a') { window.location.href = '/criteria?filter=' + encodeURIComponent(filter); return; }
    if (key === 'i') { window.location.href = '/?filter=' + encodeURIComponent(filter) + '&client=' + encodeURIComponent(client); return; }
    if (key === 'f') { cycleFilter(); return; }
    if (key === 'u') { undo(); return; }
    if (!state) { if (key === 'j') { next(); } return; }
    if (key === 'j') { next(); }
    else if (key === 'k') { previous(); }
    else if (key === 'g') { grade('good', started).catch(function () {}); }
    else if (key === 'b') { event.preventDefault(); startBad(started); }
    else if (key === 'r') { event.preventDefault(); document.getElementById('reason').focus(); }
    else if (key === 'c') { event.preventDefault(); document.getElementById('correction').focus(); }
    else if (key === 'n') { event.preventDefault(); openForm(null); }
    else if (key === 'p') { event.preventDefault(); propose(); }
    else if (key >= '1' && key <= '9') { toggleCriterion(parseInt(key, 10) - 1, started); }
  });

  // Buttons for mouse users (the keyboard is the main way).
  var goodButton = document.getElementById('good-button');
  if (goodButton) { goodButton.addEventListener('click', function () { grade('good', performance.now()).catch(function () {}); }); }
  var badButton = document.getElementById('bad-button');
  if (badButton) { badButton.addEventListener('click', function () { startBad(performance.now()); }); }
  Array.prototype.forEach.call(document.querySelectorAll('.run-judges'), function (button) {
    button.addEventListener('click', function () {
      setStatus('running the LM judge…', 'info');
      post('/api/criteria/' + button.dataset.cid + '/judge', {}).then(function () { window.location.reload(); }, function () {});
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll('form'), function (f) {
    f.addEventListener('submit', function (event) { event.preventDefault(); });
  });
}());
