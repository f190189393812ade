function (doc) {
  // One view answers every list: keys start with a facet name, ["name", project],
  // ["author", folded, project], ... pouchdb-server builds each view of a design
  // document in its own pass over the database, so one view costs one pass.
  var id = doc._id, i;
  // Who an author or maintainer field names (model.person_names, the same rule): the
  // name, then the display names of the email field's addresses ("Jane Doe
  // <jane@x.org>": PEP 621 metadata leaves the name empty), each once. The patterns
  // match in linear time (a field from another index may be any text); blanks are
  // trimmed by hand, as Python strips the same four.
  function trimmed(text, chars) {
    var start = 0, end = text.length;
    while (start < end && chars.indexOf(text.charAt(start)) >= 0) { start++; }
    while (end > start && chars.indexOf(text.charAt(end - 1)) >= 0) { end--; }
    return text.substring(start, end);
  }
  function blankless(text) { return trimmed(text, ' \t\r\n'); }
  function personNames(name, email) {
    var candidates = typeof name === 'string' ? [name] : [], found = [], seen = {}, j;
    var parts = typeof email === 'string' ? email.match(/(?:"[^"]*"|[^,"])+/g) || [] : [];
    for (j = 0; j < parts.length; j++) {
      var named = /^([^<>]*)<[^<>]*>$/.exec(blankless(parts[j]));
      if (named) { candidates.push(trimmed(blankless(named[1]), '"')); }
    }
    for (j = 0; j < candidates.length; j++) {
      var one = blankless(candidates[j]), folded = '~' + one.toLowerCase();
      if (one && !seen[folded]) { seen[folded] = true; found.push(one); }
    }
    return found;
  }
  if (doc.type === 'release') {
    if (doc.upload_time) {
      // Newest first with descending=true; the id ends the key so that keyset paging
      // is exact when two releases share a second.
      emit(['released'].concat(doc.upload_time, [id]),
           [doc.project, doc.name, doc.version, doc.yanked]);
    }
    // Releases whose own metadata is not stored yet: the backfill's work list.
    if (!doc.info) { emit(['needs-info', id], null); }
    return;
  }
  if (doc.type !== 'project') { return; }
  emit(['name', id], [doc.name, doc.last_serial, doc.status, doc.summary,
                      doc.latest_version, doc.requires_python]);
  if (typeof doc.last_serial === 'number') { emit(['serial', doc.last_serial, id], null); }
  // Stored by a version before "requires": pypioncouch.upgrade fills it in.
  if (doc.info && doc.requires === undefined) { emit(['needs-requires', id], null); }
  for (i = 0; doc.requires_unparsable && i < doc.requires_unparsable.length; i++) {
    emit(['unparsable-requirement', id, i], doc.requires_unparsable[i]);
  }
  // A quarantined project is in no list (PyPI's index and search leave it out).
  if (doc.status === 'quarantined') { return; }
  // (Fields are PyPI's as sent: from another index, anything may come. A map that
  // throws loses the whole document on Apache CouchDB, its name row included.)
  var people = personNames(doc.author, doc.author_email);
  for (i = 0; i < people.length; i++) {
    emit(['author', people[i].toLowerCase(), id], people[i]);
  }
  people = personNames(doc.maintainer, doc.maintainer_email);
  for (i = 0; i < people.length; i++) {
    emit(['maintainer', people[i].toLowerCase(), id], people[i]);
  }
  if (doc.latest_version) { emit(['python', doc.requires_python || '', id], null); }
  // Dependents: the names the latest release requires, normalized by the sync
  // (model.requirements_by_name, with packaging); the value is what it wrote.
  if (doc.requires && typeof doc.requires === 'object') {
    for (var required in doc.requires) {
      if (doc.requires.hasOwnProperty(required)) {
        emit(['requires', required, id], doc.requires[required]);
      }
    }
  }
  // Open advisories (OSV, not withdrawn) of the latest release, as PyPI lists them.
  var vulns = doc.pypi && doc.pypi.vulnerabilities, open = [];
  for (i = 0; doc.latest_version && vulns && i < vulns.length; i++) {
    var v = vulns[i];
    if (v && typeof v === 'object' && !v.withdrawn) {
      open.push({id: v.id, aliases: v.aliases || [], fixed_in: v.fixed_in || [],
                 summary: v.summary || null, link: v.link || null});
    }
  }
  if (open.length) { emit(['advisory', id], open); }
  // (seen's keys are prefixed: a plain object already "has" constructor, __proto__)
  var seen = {};
  var keywords = Array.isArray(doc.keywords) ? doc.keywords : [];
  for (i = 0; i < keywords.length; i++) {
    if (typeof keywords[i] !== 'string') { continue; }
    var word = keywords[i].toLowerCase();
    if (!seen['~' + word]) { seen['~' + word] = true; emit(['keyword', word, id], null); }
  }
  // Every prefix of every classifier, once: a parent ("License") selects its
  // children as PyPI does, in name order, and its _count is a count of projects.
  seen = {};
  var classifiers = Array.isArray(doc.classifiers) ? doc.classifiers : [];
  for (i = 0; i < classifiers.length; i++) {
    if (typeof classifiers[i] !== 'string') { continue; }
    var parts = classifiers[i].split(' :: ');
    for (var depth = 1; depth <= parts.length; depth++) {
      var prefix = parts.slice(0, depth).join(' :: ');
      if (!seen['~' + prefix]) {
        seen['~' + prefix] = true;
        emit(['classifier', prefix, id], null);
      }
    }
  }
}
