// The project runs on Node 22 LTS (pinned by the `node` devDependency);
// Effect 4 needs >= 22.19. Fail early and say how to fix it.
const [major, minor] = process.versions.node.split(".").map(Number)
if (major < 22 || (major === 22 && minor < 19)) {
  console.error(
    `BEDS needs Node >= 22.19, found ${process.version}. Run it through npm (npm test, npm start) so the pinned Node in node_modules/.bin is used, or run npm install first.`,
  )
  process.exit(1)
}
console.log(`node ${process.version}`)
