function (newDoc, oldDoc, userCtx, secObj) {
  // Keep foreign writes in shape: what the web front and the views rely on.
  if (newDoc._deleted) { return; }
  if (newDoc._id.indexOf('_design/') === 0) { return; }
  function require(field, message) {
    if (newDoc[field] === undefined) {
      throw({forbidden: message || ('missing field ' + field)});
    }
  }
  if (newDoc.type === 'project') {
    require('name'); require('versions'); require('release_digests');
    if (newDoc._id.indexOf(':') !== -1) {
      throw({forbidden: 'a project id is a normalized name (no colon)'});
    }
  } else if (newDoc.type === 'release') {
    require('project'); require('version'); require('files');
    if (newDoc._id !== newDoc.project + ':' + newDoc.version) {
      throw({forbidden: 'a release id is <project>:<version>'});
    }
  } else {
    throw({forbidden: 'documents here are of type project or release'});
  }
}
